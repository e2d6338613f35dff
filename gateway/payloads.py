"""What clients send, checked and typed: JSON bodies (bounded in size), resume offsets, paging."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from gateway.errors import ApiError, bad_request, unprocessable

JSON_MEDIA_TYPES = ("application/json",)
MAX_OFFSET = 2**62


@dataclass(frozen=True)
class ReplyRequest:
    content: str
    conversation_id: str = ""
    model: str = ""
    request_id: str = ""
    interrupt: bool = False

    @classmethod
    def from_json(cls, body: object) -> ReplyRequest:
        if not isinstance(body, dict):
            raise unprocessable("the body must be a JSON object")
        content = body.get("content")
        if content is None:
            raise unprocessable("content is required")
        if not isinstance(content, str):
            raise unprocessable("content must be a string")
        interrupt = body.get("interrupt", False)
        if not isinstance(interrupt, bool):
            raise unprocessable("interrupt must be true or false")
        return cls(
            content=content,
            conversation_id=_optional_str(body, "conversation_id"),
            model=_optional_str(body, "model"),
            request_id=_optional_str(body, "request_id"),
            interrupt=interrupt,
        )


def _optional_str(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise unprocessable(f"{name} must be a string")
    return value


def too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"the body is larger than {limit} bytes")


def content_too_large(chars: int, limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"content is {chars} characters; the limit is {limit}")


def is_json_media_type(content_type: str | None) -> bool:
    if content_type is None:
        return False
    media_type = content_type.partition(";")[0].strip().lower()
    return media_type in JSON_MEDIA_TYPES or (media_type.startswith("application/") and media_type.endswith("+json"))


async def read_json(request: Request, limit: int) -> object:
    """The request's JSON body: 400 when it is not JSON, 413 past `limit` bytes (read no further than that)."""
    if not is_json_media_type(request.headers.get("content-type")):
        raise bad_request("the body must be JSON, sent with Content-Type: application/json")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, RecursionError):
        raise bad_request("the body is not valid JSON") from None


def parse_offset(value: str, source: str) -> int:
    """A resume offset in code points: a whole number, 0 or more."""
    text = value.strip()
    if not text.isascii() or not text.isdigit() or int(text) > MAX_OFFSET:
        raise bad_request(f"{source} must be a whole number of characters, 0 or more, got {value[:40]!r}")
    return int(text)


def resume_offset(last_event_id: str | None, offset: str | None) -> int:
    """After the Last-Event-ID header when present, else ?offset=, else 0."""
    if last_event_id is not None and last_event_id.strip():
        return parse_offset(last_event_id, "Last-Event-ID")
    if offset is not None:
        return parse_offset(offset, "offset")
    return 0


def parse_page_size(value: str | None) -> int:
    if value is None or not value.strip():
        return 0
    text = value.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 9:
        raise bad_request(f"page_size must be a whole number, got {value[:40]!r}")
    return int(text)


SUBMIT = "submit-message"
REGENERATE = "regenerate-message"
MAX_CHAT_ID_CHARS = 200


@dataclass(frozen=True)
class ChatRequest:
    """The body the AI SDK's DefaultChatTransport posts, `{id, messages, trigger, messageId?}`, reduced to what is new.

    The server's conversation is the history: of `messages` only the last user message counts.
    """

    chat_id: str
    trigger: str
    # the last user message: the client's id and its text parts, joined
    message_id: str
    text: str
    # regenerate-message: the id of the reply to replace, when the client names one
    replaced_id: str = ""

    @property
    def regenerate(self) -> bool:
        return self.trigger == REGENERATE

    @classmethod
    def from_json(cls, body: object) -> ChatRequest:
        if not isinstance(body, dict):
            raise unprocessable("the body must be a JSON object")
        chat_id = chat_id_of(body.get("id"), "id")
        trigger = body.get("trigger", SUBMIT)
        if trigger not in (SUBMIT, REGENERATE):
            raise unprocessable(f"trigger must be {SUBMIT!r} or {REGENERATE!r}")
        messages = body.get("messages")
        if not isinstance(messages, list):
            raise unprocessable("messages must be a list")
        users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        if not users:
            raise unprocessable("messages holds no user message")
        last = users[-1]
        message_id = last.get("id")
        if not isinstance(message_id, str) or not message_id or len(message_id) > MAX_CHAT_ID_CHARS:
            raise unprocessable(f"the last user message needs an id of 1 to {MAX_CHAT_ID_CHARS} characters")
        parts = last.get("parts")
        if not isinstance(parts, list):
            raise unprocessable("the last user message's parts must be a list")
        text = ""
        for part in parts:
            if isinstance(part, dict) and part.get("type") == "text":
                piece = part.get("text")
                if not isinstance(piece, str):
                    raise unprocessable("a text part's text must be a string")
                text += piece
        if trigger == SUBMIT and not text.strip():
            raise unprocessable("the last user message has no text")
        return cls(chat_id, trigger, message_id, text, _optional_str(body, "messageId"))


def chat_id_of(value: object, source: str) -> str:
    """A client's chat id: a string of 1 to 200 characters."""
    if not isinstance(value, str) or not value or len(value) > MAX_CHAT_ID_CHARS or "\x00" in value:
        raise bad_request(f"{source} must be a chat id of 1 to {MAX_CHAT_ID_CHARS} characters")
    return value
