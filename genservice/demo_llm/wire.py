"""The OpenAI chat-completions wire format: requests parsed, replies framed as OpenAI sends them, its two routes.

Whatever decides a reply hands its text over as pieces; a streamed reply is `chat.completion.chunk` server-sent
events: the role, one chunk per piece, the finish reason, the usage when asked for it, then `[DONE]`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

DEFAULT_MODEL = "demo"


@dataclass(frozen=True)
class ChatRequest:
    """The parts of a chat-completions request a reply needs; `body` is the JSON as received."""

    model: str
    messages: tuple[tuple[str, str], ...]  # (role, text)
    stream: bool
    include_usage: bool
    body: dict[str, Any] = field(repr=False)

    @property
    def last_user_text(self) -> str:
        return next((text for role, text in reversed(self.messages) if role == "user"), "")


# answers one request; raising ValueError answers 400 with its message
Responder = Callable[[ChatRequest], Response]


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


def error_response(status: int, message: str) -> JSONResponse:
    kind, code = {
        400: ("invalid_request_error", "invalid_request"),
        401: ("authentication_error", "invalid_api_key"),
        404: ("not_found_error", "model_not_found"),
        429: ("rate_limit_error", "rate_limit_exceeded"),
    }.get(status, ("server_error" if status >= 500 else "invalid_request_error", f"http_{status}"))
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}}, status)


def sse(payload: Mapping[str, Any]) -> str:
    """One server-sent event carrying `payload` as compact JSON."""
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


def _count_tokens(text: str) -> int:
    return (len(text) + 3) // 4  # a rough 4-characters-per-token estimate


def _usage(request: ChatRequest, text: str) -> dict[str, int]:
    prompt, completion = sum(_count_tokens(t) for _, t in request.messages), _count_tokens(text)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _envelope(request: ChatRequest, kind: str) -> dict[str, Any]:
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()), "model": request.model}


async def stream_events(
    request: ChatRequest, pieces: AsyncIterable[str], finish_reason: str = "stop"
) -> AsyncIterator[str]:
    """The reply's server-sent events, one content chunk per piece as it comes."""
    envelope = _envelope(request, "chat.completion.chunk")

    def delta(content: dict[str, str], finish: str | None = None) -> str:
        return sse(envelope | {"choices": [{"index": 0, "delta": content, "logprobs": None, "finish_reason": finish}]})

    text: list[str] = []
    yield delta({"role": "assistant", "content": ""})
    async for piece in pieces:
        text.append(piece)
        yield delta({"content": piece})
    yield delta({}, finish_reason)
    if request.include_usage:
        yield sse(envelope | {"choices": [], "usage": _usage(request, "".join(text))})
    yield "data: [DONE]\n\n"


def event_stream(
    events: AsyncIterable[str], response_class: type[StreamingResponse] = StreamingResponse
) -> StreamingResponse:
    return response_class(
        events, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


def completion_response(request: ChatRequest, text: str, finish_reason: str = "stop") -> JSONResponse:
    """The whole reply at once, for a request that did not ask to stream."""
    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None}
    choice["finish_reason"] = finish_reason
    return JSONResponse(_envelope(request, "chat.completion") | {"choices": [choice], "usage": _usage(request, text)})


def openai_app(respond: Responder, *, model: str = DEFAULT_MODEL) -> Starlette:
    """POST /v1/chat/completions answered by `respond`, and GET /v1/models listing `model`."""

    async def chat_completions(http_request: Request) -> Response:
        try:
            body = json.loads(await http_request.body())
        except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
            return error_response(400, f"the request body is not valid JSON: {err}")
        try:
            return respond(parse_chat_request(body))
        except ValueError as err:
            return error_response(400, str(err))

    async def models(_: Request) -> Response:
        entry = {"id": model, "object": "model", "created": 0, "owned_by": "genservice"}
        return JSONResponse({"object": "list", "data": [entry]})

    return Starlette(
        routes=[Route("/v1/chat/completions", chat_completions, methods=["POST"]), Route("/v1/models", models)]
    )
