"""demo-llm: an offline OpenAI-compatible chat-completions server that streams a canned, friendly reply.

A planner decides each reply (`ReplyPlan`: text, pace and failure knobs); `create_app` turns any planner into a
Starlette app speaking the OpenAI wire format, so the tests' model server reuses it with a planner of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Send

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "demo"


def parse_addr(value: str) -> tuple[str, int]:
    """Split `host:port` (or `[v6]:port`) and check the port."""
    host, sep, port_text = value.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"address must look like HOST:PORT with a port in 0..65535, got {value!r}")
    return host, int(port_text)


@dataclass(frozen=True)
class DemoLLMConfig:
    host: str = "127.0.0.1"
    port: int = 8181
    delay: float = 0.05
    chunk_chars: int = 4

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DemoLLMConfig:
        host, port = parse_addr(env.get("DEMO_LLM_ADDR", f"{cls.host}:{cls.port}"))
        delay_text = env.get("DEMO_LLM_DELAY", str(cls.delay))
        chunk_text = env.get("DEMO_LLM_CHUNK", str(cls.chunk_chars))
        try:
            delay = float(delay_text)
        except ValueError:
            delay = math.nan
        if not math.isfinite(delay) or delay < 0:
            raise ValueError(f"DEMO_LLM_DELAY must be a number of seconds >= 0, got {delay_text!r}")
        if not chunk_text.strip().isdigit() or int(chunk_text) < 1:
            raise ValueError(f"DEMO_LLM_CHUNK must be a whole number of characters >= 1, got {chunk_text!r}")
        return cls(host=host, port=port, delay=delay, chunk_chars=int(chunk_text))


@dataclass(frozen=True)
class ChatRequest:
    """The parts of a chat-completions request a planner needs; `body` is the JSON as received."""

    model: str
    messages: tuple[tuple[str, str], ...]  # (role, text)
    stream: bool
    include_usage: bool
    body: dict[str, Any] = field(repr=False)

    @property
    def last_user_text(self) -> str:
        return next((text for role, text in reversed(self.messages) if role == "user"), "")


@dataclass(frozen=True)
class ReplyPlan:
    """What to send. Counts are Unicode code points; a knob past the end fires after the last character.

    Pace and the *_after knobs apply to streamed replies only; fail_status and finish_reason to both kinds.
    """

    text: str
    chunk_chars: int = 4
    delay: float = 0.0
    fail_status: int | None = None  # answer this HTTP status (OpenAI error body) before any token
    error_after: int | None = None  # after N chars send an SSE error chunk and end the stream
    drop_after: int | None = None  # after N chars cut the connection mid-body
    stall_after: int | None = None  # after N chars pause for stall_seconds
    stall_seconds: float = 0.0
    finish_reason: str = "stop"


Planner = Callable[[ChatRequest], ReplyPlan]


def _message_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text ones
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def parse_chat_request(body: object) -> ChatRequest:
    """Validate a decoded JSON body; raise ValueError with a client-facing message."""
    if not isinstance(body, dict):
        raise ValueError("request body must be a JSON object")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise ValueError("'messages' must be a non-empty array")
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in raw):
        raise ValueError("each message must be an object with a string 'role'")
    options = body.get("stream_options")
    return ChatRequest(
        model=str(body.get("model") or DEFAULT_MODEL),
        messages=tuple((m["role"], _message_text(m.get("content"))) for m in raw),
        stream=body.get("stream") is True,
        include_usage=isinstance(options, dict) and options.get("include_usage") is True,
        body=body,
    )


def demo_reply_text(user_text: str) -> str:
    words = user_text.split()
    quote = " ".join(words[:6])[:60] + ("…" if len(words) > 6 else "")
    opener = f"Thanks for your message “{quote}”." if quote else "Hello! Your message looks empty, so I'll just say hi."
    return (
        f"{opener} I'm an offline demo model running right here on this machine 🚀, with no real language model "
        "and no network behind me: just a café-style placeholder that types a few characters at a time.\n\n"
        "That makes me handy for trying the chat out. Close the tab, reload the page or come back later, and this "
        "reply should still be here, picking up where it left off. Ask again and you'll get the same answer, "
        "word for word. Have a nice day! ✨"
    )


def demo_planner(config: DemoLLMConfig) -> Planner:
    def plan(request: ChatRequest) -> ReplyPlan:
        text = demo_reply_text(request.last_user_text)
        return ReplyPlan(text=text, chunk_chars=config.chunk_chars, delay=config.delay)

    return plan


def _count_tokens(text: str) -> int:
    return (len(text) + 3) // 4  # a rough 4-characters-per-token estimate


def error_response(status: int, message: str) -> JSONResponse:
    kind, code = {
        400: ("invalid_request_error", "invalid_request"),
        401: ("authentication_error", "invalid_api_key"),
        404: ("not_found_error", "model_not_found"),
        429: ("rate_limit_error", "rate_limit_exceeded"),
    }.get(status, ("server_error" if status >= 500 else "invalid_request_error", f"http_{status}"))
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}}, status)


class _Drop(Exception):
    """Raised by a body iterator to end the response without its final chunk."""


class _DroppableStreamingResponse(StreamingResponse):
    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        except _Drop:  # returning with the body unfinished makes uvicorn close the transport
            logger.info("dropping the connection mid-stream as planned")


def _sse(payload: Mapping[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


def _chunk(request: ChatRequest, reply_id: str, created: int, **fields: Any) -> str:
    envelope = {"id": reply_id, "object": "chat.completion.chunk", "created": created, "model": request.model}
    return _sse(envelope | fields)


def _usage(request: ChatRequest, text: str) -> dict[str, int]:
    prompt, completion = sum(_count_tokens(t) for _, t in request.messages), _count_tokens(text)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _events(plan: ReplyPlan, request: ChatRequest, reply_id: str, created: int) -> AsyncIterator[str]:
    def delta(content: dict[str, str], finish_reason: str | None = None) -> str:
        choice = {"index": 0, "delta": content, "logprobs": None, "finish_reason": finish_reason}
        return _chunk(request, reply_id, created, choices=[choice])

    text = plan.text
    stall_at, error_at, drop_at = (
        None if mark is None else min(mark, len(text)) for mark in (plan.stall_after, plan.error_after, plan.drop_after)
    )
    marks = [mark for mark in (stall_at, error_at, drop_at) if mark is not None]
    yield delta({"role": "assistant", "content": ""})
    pos = 0
    while True:  # every mark is a chunk boundary, so each one is met exactly
        if pos == stall_at:
            await asyncio.sleep(plan.stall_seconds)
        if pos == error_at:
            yield _sse({"error": {"message": "the model failed mid-stream (planned)", "type": "server_error"}})
            return
        if pos == drop_at:
            raise _Drop
        if pos == len(text):
            break
        end = min([pos + plan.chunk_chars, len(text), *(mark for mark in marks if mark > pos)])
        await asyncio.sleep(plan.delay)
        yield delta({"content": text[pos:end]})
        pos = end
    yield delta({}, plan.finish_reason)
    if request.include_usage:
        yield _chunk(request, reply_id, created, choices=[], usage=_usage(request, text))
    yield "data: [DONE]\n\n"


def create_app(planner: Planner, *, model: str = DEFAULT_MODEL) -> Starlette:
    """An OpenAI-compatible app; a planner raising ValueError answers 400 with its message."""

    async def chat_completions(http_request: Request) -> Response:
        try:
            body = json.loads(await http_request.body())
        except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
            return error_response(400, f"the request body is not valid JSON: {err}")
        try:
            request = parse_chat_request(body)
            plan = planner(request)
        except ValueError as err:
            return error_response(400, str(err))
        if plan.fail_status is not None:
            return error_response(plan.fail_status, f"the model answered HTTP {plan.fail_status} (planned)")
        reply_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if request.stream:
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            events = _events(plan, request, reply_id, created)
            return _DroppableStreamingResponse(events, media_type="text/event-stream", headers=headers)
        choice = {"index": 0, "message": {"role": "assistant", "content": plan.text}, "logprobs": None}
        choice["finish_reason"] = plan.finish_reason
        envelope = {"id": reply_id, "object": "chat.completion", "created": created, "model": request.model}
        return JSONResponse(envelope | {"choices": [choice], "usage": _usage(request, plan.text)})

    async def models(_: Request) -> Response:
        entry = {"id": model, "object": "model", "created": 0, "owned_by": "genservice"}
        return JSONResponse({"object": "list", "data": [entry]})

    return Starlette(
        routes=[Route("/v1/chat/completions", chat_completions, methods=["POST"]), Route("/v1/models", models)]
    )


_ENV_HELP = """environment:
  DEMO_LLM_ADDR   HOST:PORT to listen on (default 127.0.0.1:8181; --addr overrides it)
  DEMO_LLM_DELAY  seconds to wait before each chunk of the reply (default 0.05)
  DEMO_LLM_CHUNK  characters per streamed chunk (default 4)

Point the generation service at it with an OpenAI base URL of http://HOST:PORT/v1 and model "demo"."""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="demo-llm",
        description="An offline OpenAI-compatible chat-completions server that streams a canned reply slowly.",
        epilog=_ENV_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--addr", metavar="HOST:PORT", help="address to listen on (overrides DEMO_LLM_ADDR)")
    args = parser.parse_args(argv)
    try:
        config = DemoLLMConfig.from_env(os.environ)
        if args.addr is not None:
            host, port = parse_addr(args.addr)
            config = replace(config, host=host, port=port)
    except ValueError as err:
        parser.error(str(err))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.info("serving model %r on http://%s:%d/v1", DEFAULT_MODEL, config.host, config.port)
    uvicorn.run(create_app(demo_planner(config)), host=config.host, port=config.port, log_config=None)


if __name__ == "__main__":
    main()
