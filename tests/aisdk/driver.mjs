#!/usr/bin/env node
// Drives the real AI SDK chat client (DefaultChatTransport + AbstractChat with
// an in-memory ChatState) against the gateway's /v1/chat routes.
//
//   node driver.mjs <scenario> '<json-args>'
//
// Scenarios: send, abort-resume, resume-none, stop, regenerate, error, retry-post.
// Args (JSON object): gateway (base URL, required), gateway2 (second replica;
// defaults to gateway), chatId (required), text (user text), timeoutMs
// (default 20000), headers (extra request headers, e.g. Authorization),
// abortAfterDeltas (abort-resume/stop: text-deltas to wait for, default 1),
// resumeDelayMs (abort-resume: pause between loading messages and resuming),
// userMessageId (retry-post, default "u1"), secondPostDelayMs (retry-post,
// default 0), stopGateway (stop: base URL for POST .../stop, default gateway),
// moreTexts (send: texts sent after `text`, one by one), lastMessageOnly (send: post only
// the last message, via prepareSendMessagesRequest). A POST's record has postedMessages.
//
// Prints exactly one JSON line on stdout describing what the client saw and
// exits 0, also when the gateway misbehaves or the scenario times out
// ("timedOut": true). Exits 2 on usage errors and 3 on driver bugs.
import { AbstractChat, DefaultChatTransport } from 'ai';

const SCENARIOS = {
  send: scenarioSend,
  'abort-resume': scenarioAbortResume,
  'resume-none': scenarioResumeNone,
  stop: scenarioStop,
  regenerate: scenarioRegenerate,
  error: scenarioError,
  'retry-post': scenarioRetryPost,
};

// ---------------------------------------------------------------- chat state

// The framework-free ChatState the SDK's AbstractChat needs (the React/Vue/
// Svelte packages ship their own; `ai` itself only has the interface).
class MemoryChatState {
  constructor(messages = []) {
    this.messages = messages.map(m => structuredClone(m));
    this.status = 'ready';
    this.error = undefined;
    this.listeners = new Set();
  }
  pushMessage = message => {
    this.messages = this.messages.concat(this.snapshot(message));
    this.notify();
  };
  popMessage = () => {
    this.messages = this.messages.slice(0, -1);
    this.notify();
  };
  replaceMessage = (index, message) => {
    this.messages = [
      ...this.messages.slice(0, index),
      this.snapshot(message),
      ...this.messages.slice(index + 1),
    ];
    this.notify();
  };
  snapshot = thing => structuredClone(thing);
  notify() {
    for (const listener of [...this.listeners]) listener(this);
  }
}

class HeadlessChat extends AbstractChat {
  constructor({ messages, ...init }) {
    const state = new MemoryChatState(messages);
    super({ ...init, state });
    this.memoryState = state;
  }
  // Resolves once predicate(messages) holds (checked now and on every change).
  waitFor(predicate) {
    return new Promise(resolve => {
      const check = () => {
        if (predicate(this.memoryState.messages)) {
          this.memoryState.listeners.delete(check);
          resolve();
          return true;
        }
        return false;
      };
      if (!check()) this.memoryState.listeners.add(check);
    });
  }
}

// ------------------------------------------------------------------ recording

const requests = []; // every HTTP request the driver made, in order
// What to print if the scenario times out: scenarios point it at their chat.
let snapshotOnTimeout = () => ({});

function parseSse(text) {
  // Returns the `data` payloads of the complete events in text (JSON-parsed,
  // "[DONE]" kept as the string), and the unparsed rest.
  const events = [];
  const blocks = text.split(/\r\n\r\n|\n\n|\r\r/);
  const rest = blocks.pop();
  for (const block of blocks) {
    const data = [];
    for (const line of block.split(/\r\n|\n|\r/)) {
      if (line.startsWith('data:')) data.push(line.slice(line[5] === ' ' ? 6 : 5));
    }
    if (data.length === 0) continue;
    const payload = data.join('\n');
    if (payload === '[DONE]') events.push('[DONE]');
    else {
      try {
        events.push(JSON.parse(payload));
      } catch {
        events.push({ unparseable: payload });
      }
    }
  }
  return { events, rest };
}

function recordStart(method, url) {
  const record = {
    method,
    url,
    status: null,
    streamHeader: null,
    contentType: null,
    chunks: [],
    bodyEnded: false,
    fetchError: null,
  };
  requests.push(record);
  return record;
}

function recordResponse(record, response) {
  record.status = response.status;
  record.streamHeader = response.headers.get('x-vercel-ai-ui-message-stream');
  record.contentType = response.headers.get('content-type');
}

// Records the SSE events of a response body. Returns a promise that settles
// when the body ends or fails.
async function recordBody(record, body) {
  const decoder = new TextDecoder();
  let buffer = '';
  const reader = body.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      const { events, rest } = parseSse(buffer);
      buffer = rest;
      record.chunks.push(...events);
    }
    buffer += decoder.decode();
    const { events, rest } = parseSse(buffer + '\n\n');
    record.chunks.push(...events);
    if (rest.trim()) record.trailing = rest;
    record.bodyEnded = true;
  } catch (err) {
    record.bodyError = `${err.name}: ${err.message}`;
  }
}

const bodyRecordings = []; // promises of recordBody for transport responses

// Tees the body: one branch goes to the SDK, the other is recorded to its
// end even after the SDK stops reading (e.g. it throws on an `error` chunk).
function recordingStream(record, body) {
  const [forSdk, forRecord] = body.tee();
  bodyRecordings.push(recordBody(record, forRecord));
  return forSdk;
}

// A fetch for the transport: records everything and lets the driver drop the
// connection (abort) without the chat knowing, like a closed tab.
function makeFetch({ killSwitch } = {}) {
  return async (url, init = {}) => {
    const record = recordStart(init.method ?? 'GET', String(url));
    if (typeof init.body === 'string') record.postedMessages = JSON.parse(init.body).messages?.length ?? null;
    const signals = [init.signal, killSwitch?.signal].filter(Boolean);
    const signal = signals.length > 1 ? AbortSignal.any(signals) : signals[0];
    let response;
    try {
      response = await fetch(url, { ...init, signal });
    } catch (err) {
      record.fetchError = `${err.name}: ${err.message}`;
      throw err;
    }
    recordResponse(record, response);
    if (!response.body || response.status === 204 || !response.ok) return response;
    return new Response(recordingStream(record, response.body), {
      status: response.status,
      statusText: response.statusText,
      headers: response.headers,
    });
  };
}

// ------------------------------------------------------------------- helpers

// lastMessageOnly: post only the last message, as the README suggests for long chats
function makeChat({ base, chatId, messages = [], headers, killSwitch, lastMessageOnly = false }) {
  const prepareSendMessagesRequest = lastMessageOnly
    ? ({ id, messages: all, trigger, messageId }) => ({
        body: { id, messages: all.slice(-1), trigger, messageId },
      })
    : undefined;
  return new HeadlessChat({
    id: chatId,
    messages,
    transport: new DefaultChatTransport({
      api: `${base.replace(/\/+$/, '')}/v1/chat`,
      headers,
      fetch: makeFetch({ killSwitch }),
      prepareSendMessagesRequest,
    }),
  });
}

function textOf(message) {
  return (message?.parts ?? [])
    .filter(p => p.type === 'text')
    .map(p => p.text)
    .join('');
}

function describeMessages(messages) {
  return messages.map(m => ({
    id: m.id,
    role: m.role,
    text: textOf(m),
    parts: (m.parts ?? []).map(p => {
      const out = { type: p.type };
      if ('text' in p) out.text = p.text;
      if ('state' in p) out.state = p.state;
      return out;
    }),
  }));
}

function describeChat(chat) {
  return {
    status: chat.status,
    error: chat.error ? chat.error.message : null,
    messages: describeMessages(chat.messages),
  };
}

function lastAssistant(messages) {
  return [...messages].reverse().find(m => m.role === 'assistant');
}

function assistantHasText(n) {
  // The last message is an assistant message with at least n characters.
  return messages => {
    const last = messages[messages.length - 1];
    return last?.role === 'assistant' && textOf(last).length >= n;
  };
}

function deltaCounter() {
  // Counts text-delta chunks seen in recorded requests (more exact than chars).
  return () =>
    requests.reduce(
      (sum, r) => sum + r.chunks.filter(c => c && c.type === 'text-delta').length,
      0,
    );
}

async function waitUntil(predicate, { intervalMs = 5 } = {}) {
  while (!predicate()) await new Promise(r => setTimeout(r, intervalMs));
}

function summarizeStream(record) {
  const chunks = record.chunks;
  const start = chunks.find(c => c && c.type === 'start');
  return {
    status: record.status,
    streamHeader: record.streamHeader,
    messageId: start?.messageId ?? null,
    text: chunks
      .filter(c => c && c.type === 'text-delta')
      .map(c => c.delta)
      .join(''),
    types: chunks.map(c => (c === '[DONE]' ? '[DONE]' : c.type)),
    done: chunks.includes('[DONE]'),
  };
}

async function readPlainStream(record, response) {
  recordResponse(record, response);
  if (response.body) await recordBody(record, response.body);
}

// ----------------------------------------------------------------- scenarios

async function scenarioSend(args) {
  const chat = makeChat({
    base: args.gateway,
    chatId: args.chatId,
    headers: args.headers,
    lastMessageOnly: args.lastMessageOnly,
  });
  snapshotOnTimeout = () => describeChat(chat);
  for (const text of [args.text, ...(args.moreTexts ?? [])]) await chat.sendMessage({ text });
  return describeChat(chat);
}

async function scenarioError(args) {
  return scenarioSend(args);
}

async function scenarioAbortResume(args) {
  const gateway2 = args.gateway2 ?? args.gateway;
  const killSwitch = new AbortController();
  const chatA = makeChat({
    base: args.gateway,
    chatId: args.chatId,
    headers: args.headers,
    killSwitch,
  });
  snapshotOnTimeout = () => ({ ...describeChat(chatA), phase: 'before-abort' });
  const deltas = deltaCounter();
  const need = args.abortAfterDeltas ?? 1;
  const sending = chatA.sendMessage({ text: args.text });
  let sendSettled = false;
  sending.then(
    () => (sendSettled = true),
    () => (sendSettled = true),
  );
  await Promise.race([
    chatA.waitFor(assistantHasText(1)).then(() => waitUntil(() => deltas() >= need || sendSettled)),
    sending,
  ]);
  const endedBeforeAbort = sendSettled;
  killSwitch.abort(); // drop the connection; never calls /stop
  await sending.catch(() => {});
  const before = describeChat(chatA);
  const partial = lastAssistant(chatA.messages);

  const loadRecord = recordStart('GET', `${gateway2.replace(/\/+$/, '')}/v1/chat/${encodeURIComponent(args.chatId)}/messages`);
  let loaded = [];
  try {
    const loadResponse = await fetch(loadRecord.url, { headers: args.headers });
    recordResponse(loadRecord, loadResponse);
    const loadBody = await loadResponse.text();
    try {
      loaded = JSON.parse(loadBody);
    } catch {
      loadRecord.body = loadBody;
    }
  } catch (err) {
    loadRecord.fetchError = `${err.name}: ${err.message}`;
  }
  if (!Array.isArray(loaded)) {
    loadRecord.body = loaded;
    loaded = [];
  }

  if (args.resumeDelayMs) await new Promise(r => setTimeout(r, args.resumeDelayMs));
  const chatB = makeChat({ base: gateway2, chatId: args.chatId, messages: loaded, headers: args.headers });
  snapshotOnTimeout = () => ({
    ...describeChat(chatB),
    phase: 'resuming',
    partial: partial ? { id: partial.id, text: textOf(partial) } : null,
    loadedMessages: describeMessages(loaded),
  });
  await chatB.resumeStream();
  const after = describeChat(chatB);
  return {
    ...after,
    endedBeforeAbort,
    partial: partial ? { id: partial.id, text: textOf(partial) } : null,
    beforeAbort: before,
    loadedMessages: describeMessages(loaded),
  };
}

async function scenarioResumeNone(args) {
  const chat = makeChat({ base: args.gateway, chatId: args.chatId, headers: args.headers });
  snapshotOnTimeout = () => describeChat(chat);
  await chat.resumeStream();
  const resume = requests.find(r => r.method === 'GET' && r.url.endsWith('/stream'));
  return { ...describeChat(chat), resumeHttpStatus: resume?.status ?? null };
}

async function scenarioStop(args) {
  const stopBase = (args.stopGateway ?? args.gateway).replace(/\/+$/, '');
  const chat = makeChat({ base: args.gateway, chatId: args.chatId, headers: args.headers });
  let stopRecord = null;
  snapshotOnTimeout = () => ({ ...describeChat(chat), stopHttpStatus: stopRecord?.status ?? null });
  const deltas = deltaCounter();
  const need = args.abortAfterDeltas ?? 1;
  const sending = chat.sendMessage({ text: args.text });
  let sendSettled = false;
  sending.then(
    () => (sendSettled = true),
    () => (sendSettled = true),
  );
  await Promise.race([
    chat.waitFor(assistantHasText(1)).then(() => waitUntil(() => deltas() >= need || sendSettled)),
    sending,
  ]);
  const endedBeforeStop = sendSettled;
  stopRecord = recordStart('POST', `${stopBase}/v1/chat/${encodeURIComponent(args.chatId)}/stop`);
  let stopResponse = null;
  try {
    const response = await fetch(stopRecord.url, { method: 'POST', headers: args.headers });
    recordResponse(stopRecord, response);
    const body = await response.text();
    try {
      stopResponse = JSON.parse(body);
    } catch {
      stopResponse = body;
    }
  } catch (err) {
    stopRecord.fetchError = `${err.name}: ${err.message}`;
  }
  await sending;
  return {
    ...describeChat(chat),
    endedBeforeStop,
    stopHttpStatus: stopRecord.status,
    stopResponse,
  };
}

async function scenarioRegenerate(args) {
  const chat = makeChat({ base: args.gateway, chatId: args.chatId, headers: args.headers });
  let first = null;
  snapshotOnTimeout = () => ({ ...describeChat(chat), first });
  await chat.sendMessage({ text: args.text });
  first = describeChat(chat);
  await chat.regenerate();
  return { ...describeChat(chat), first };
}

async function scenarioRetryPost(args) {
  const base = args.gateway.replace(/\/+$/, '');
  const body = JSON.stringify({
    id: args.chatId,
    messages: [
      { id: args.userMessageId ?? 'u1', role: 'user', parts: [{ type: 'text', text: args.text }] },
    ],
    trigger: 'submit-message',
  });
  const post = async delayMs => {
    if (delayMs) await new Promise(r => setTimeout(r, delayMs));
    const record = recordStart('POST', `${base}/v1/chat`);
    try {
      const response = await fetch(record.url, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...(args.headers ?? {}) },
        body,
      });
      await readPlainStream(record, response);
    } catch (err) {
      record.fetchError = `${err.name}: ${err.message}`;
    }
    return record;
  };
  const pending = [post(0), post(args.secondPostDelayMs ?? 0)];
  snapshotOnTimeout = () => ({
    streams: requests.filter(r => r.method === 'POST').map(summarizeStream),
  });
  const records = await Promise.all(pending);
  return { streams: records.map(summarizeStream) };
}

// ---------------------------------------------------------------------- main

function usage(message) {
  process.stderr.write(
    `${message}\nusage: node driver.mjs <${Object.keys(SCENARIOS).join('|')}> '<json-args>'\n`,
  );
  process.exit(2);
}

function emit(result, code = 0) {
  process.stdout.write(JSON.stringify(result) + '\n', () => process.exit(code));
}

async function main() {
  const [scenario, rawArgs] = process.argv.slice(2);
  const run = SCENARIOS[scenario];
  if (!run) usage(`unknown scenario: ${scenario}`);
  let args;
  try {
    args = JSON.parse(rawArgs ?? '{}');
  } catch (err) {
    usage(`bad json-args: ${err.message}`);
  }
  if (typeof args !== 'object' || args === null) usage('json-args must be an object');
  if (!args.gateway || !args.chatId) usage('json-args needs gateway and chatId');
  if (args.text == null && scenario !== 'resume-none') usage(`${scenario} needs text`);

  const timeoutMs = args.timeoutMs ?? 20000;
  const started = Date.now();
  const base = { scenario, chatId: args.chatId };
  let timer;
  const timeout = new Promise(resolve => {
    timer = setTimeout(() => resolve({ timedOut: true }), timeoutMs);
  });
  let outcome;
  try {
    outcome = await Promise.race([run(args).then(result => ({ result })), timeout]);
  } catch (err) {
    process.stderr.write(`driver bug: ${err.stack ?? err}\n`);
    emit({ ...base, driverError: String(err.stack ?? err), requests }, 3);
    return;
  }
  clearTimeout(timer);
  if (!outcome.timedOut) {
    // Let the recorded copies of the streams reach their ends (e.g. the
    // `[DONE]` after an `error` chunk the SDK stopped reading at).
    const settleMs = Math.max(0, Math.min(2000, timeoutMs - (Date.now() - started)));
    await Promise.race([
      Promise.allSettled(bodyRecordings),
      new Promise(r => setTimeout(r, settleMs)),
    ]);
  }
  emit({
    ...base,
    timedOut: Boolean(outcome.timedOut),
    elapsedMs: Date.now() - started,
    ...(outcome.timedOut ? snapshotOnTimeout() : outcome.result),
    requests,
  });
}

main();
