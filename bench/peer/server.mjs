// The peer in bench.replies: resumable-stream 2.2.13 with Redis, in one Node process, speaking the
// product's reply routes and SSE event format so that the bench's readers read it unchanged.
//
//   node server.mjs [PORT]    env: MODEL_BASE_URL (required), REDIS_URL, KEY_PREFIX, PORT
//
// POST /v1/replies {"content"} streams a new reply from the model; GET /v1/messages/{id}/events
// replays a running one from its start, then follows it live (resumable-stream's own pub/sub).
import http from "node:http";
import { randomUUID } from "node:crypto";
import { createClient } from "redis";
import { createResumableStreamContext } from "resumable-stream";

const port = Number(process.argv[2] ?? process.env.PORT ?? 8090);
const modelBaseUrl = process.env.MODEL_BASE_URL;
const redisUrl = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";
const keyPrefix = process.env.KEY_PREFIX ?? `bench-peer-${randomUUID().slice(0, 8)}`;
if (!modelBaseUrl) {
  console.error("MODEL_BASE_URL is not set (the OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1)");
  process.exit(2);
}
const modelUrl = new URL(`${modelBaseUrl.replace(/\/$/, "")}/chat/completions`);
const modelAgent = new http.Agent({ keepAlive: true });

const publisher = createClient({ url: redisUrl });
const subscriber = createClient({ url: redisUrl });
await Promise.all([publisher.connect(), subscriber.connect()]);
const streams = createResumableStreamContext({ waitUntil: null, keyPrefix, publisher, subscriber });

const sse = (event, data) => `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;

// offsets count code points, as the product's do (a JS string's length counts UTF-16 units)
const codePoints = (text) => text.length - (text.match(/[\uD800-\uDBFF]/g)?.length ?? 0);

// The reply as SSE frames: started, a delta per model chunk, finished. The request is the one
// genservice sends; the model server finds the bench's stream key in the last user message.
function replyFrames(id, content) {
  return new ReadableStream({
    start(controller) {
      const parts = [];
      let offset = 0;
      let ended = false;
      const finish = (status, error) => {
        if (ended) return;
        ended = true;
        const message = { id, conversation_id: id, role: "assistant", status, content: parts.join(""), error };
        controller.enqueue(sse("finished", { message }));
        controller.close();
      };
      const onData = (data) => {
        if (data === "[DONE]") return finish("complete", "");
        const text = JSON.parse(data).choices?.[0]?.delta?.content;
        if (!text) return;
        const start = offset;
        offset += codePoints(text);
        parts.push(text);
        controller.enqueue(`id: ${offset}\nevent: delta\ndata: ${JSON.stringify({ text, offset: start })}\n\n`);
      };
      controller.enqueue(sse("started", { message_id: id, conversation_id: id }));
      const request = http.request(
        modelUrl,
        {
          method: "POST",
          agent: modelAgent,
          headers: { "Content-Type": "application/json", Authorization: "Bearer bench" },
        },
        (response) => {
          if (response.statusCode !== 200) {
            response.resume();
            return finish("error", `the model answered HTTP ${response.statusCode}`);
          }
          response.setEncoding("utf8");
          let buffer = "";
          response.on("data", (chunk) => {
            const events = (buffer + chunk).split("\n\n");
            buffer = events.pop();
            for (const event of events) {
              for (const line of event.split("\n")) {
                if (line.startsWith("data:") && !ended) onData(line.slice(5).trim());
              }
            }
          });
          response.on("close", () => finish("error", "the model's stream ended before [DONE]"));
        },
      );
      request.on("error", (error) => finish("error", `the model: ${error.message}`));
      request.end(
        JSON.stringify({
          model: "bench",
          messages: [{ role: "user", content }],
          stream: true,
          stream_options: { include_usage: true },
        }),
      );
    },
  });
}

function answer(response, status, text) {
  response.writeHead(status, { "Content-Type": "text/plain" }).end(text);
}

async function send(response, stream) {
  if (stream === undefined) return answer(response, 404, "no such stream");
  if (stream === null) return answer(response, 422, "the stream is already done");
  response.writeHead(200, { "Content-Type": "text/event-stream", "Cache-Control": "no-cache" });
  const reader = stream.getReader();
  response.on("close", () => reader.cancel().catch(() => {}));
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    response.write(value);
  }
  response.end();
}

async function readJson(request) {
  const chunks = [];
  for await (const chunk of request) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString("utf8"));
}

const EVENTS = /^\/v1\/messages\/([^/]+)\/events$/;

const server = http.createServer(async (request, response) => {
  try {
    const url = new URL(request.url, "http://peer");
    const events = EVENTS.exec(url.pathname);
    if (request.method === "POST" && url.pathname === "/v1/replies") {
      const body = await readJson(request);
      const id = randomUUID();
      await send(response, await streams.resumableStream(id, () => replyFrames(id, String(body.content ?? ""))));
    } else if (request.method === "GET" && events) {
      // resumable-stream can skip characters of the SSE stream, not of the reply's text: only the full replay
      if (Number(url.searchParams.get("offset") ?? 0) !== 0) return answer(response, 400, "only offset 0");
      await send(response, await streams.resumeExistingStream(events[1]));
    } else if (request.method === "GET" && url.pathname === "/healthz") {
      answer(response, 200, "ok");
    } else {
      answer(response, 404, `no route ${request.method} ${url.pathname}`);
    }
  } catch (error) {
    if (!response.headersSent) answer(response, 500, String(error));
    else response.destroy();
  }
});

server.listen(port, "127.0.0.1", () => {
  console.log(`peer listening on 127.0.0.1:${port}: resumable-stream, Redis ${redisUrl}, key prefix ${keyPrefix}`);
});

// the run's keys are removed on the way out; the Redis server may hold others' keys
process.once("SIGTERM", async () => {
  server.close();
  server.closeAllConnections();
  let removed = 0;
  for await (const key of publisher.scanIterator({ MATCH: `${keyPrefix}:*`, COUNT: 1000 })) {
    removed += await publisher.del(key);
  }
  await Promise.all([publisher.quit(), subscriber.quit()]);
  console.log(`peer stopped: ${removed} keys removed`);
  process.exit(0);
});
