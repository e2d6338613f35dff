"""How genservice's messages look to a browser: JSON objects, and reply events as SSE frames."""

from __future__ import annotations

import json
from datetime import UTC
from typing import Any

import msgspec
from google.protobuf.timestamp_pb2 import Timestamp

from gateway import sse
from genservice.replies.records import ChatMessage
from genservice.v1 import genservice_pb2 as pb

STATUS_NAMES = {
    pb.MESSAGE_STATUS_STREAMING: "streaming",
    pb.MESSAGE_STATUS_COMPLETE: "complete",
    pb.MESSAGE_STATUS_ERROR: "error",
    pb.MESSAGE_STATUS_CANCELLED: "cancelled",
}
ROLE_NAMES = {pb.ROLE_USER: "user", pb.ROLE_ASSISTANT: "assistant"}

JSONObject = dict[str, Any]


class _DeltaView(msgspec.Struct):
    text: str
    offset: int


_DELTA_ENCODER = msgspec.json.Encoder()


def timestamp(stamp: Timestamp) -> str:
    """ISO-8601 in UTC, e.g. 2025-01-02T03:04:05.678901+00:00."""
    return stamp.ToDatetime(tzinfo=UTC).isoformat()


def message(msg: pb.Message) -> JSONObject:
    view: JSONObject = {
        "id": msg.id,
        "conversation_id": msg.conversation_id,
        "role": ROLE_NAMES.get(msg.role, "unspecified"),
        "content": msg.content,
        "status": STATUS_NAMES.get(msg.status, "unspecified"),
        "error": msg.error,
        "model": msg.model,
        "finish_reason": msg.finish_reason,
        "created_at": timestamp(msg.created_at) if msg.HasField("created_at") else None,
        "updated_at": timestamp(msg.updated_at) if msg.HasField("updated_at") else None,
    }
    if msg.HasField("usage"):
        view["usage"] = {
            "prompt_tokens": msg.usage.prompt_tokens,
            "completion_tokens": msg.usage.completion_tokens,
            "total_tokens": msg.usage.total_tokens,
        }
    return view


def conversation(conv: pb.Conversation) -> JSONObject:
    return {
        "id": conv.id,
        "title": conv.title,
        "created_at": timestamp(conv.created_at) if conv.HasField("created_at") else None,
        "updated_at": timestamp(conv.updated_at) if conv.HasField("updated_at") else None,
    }


def ui_message(msg: ChatMessage) -> JSONObject:
    """An AI SDK UIMessage: one text part."""
    return {"id": msg.id, "role": msg.role.value, "parts": [{"type": "text", "text": msg.text}]}


def _json(value: JSONObject) -> str:
    return json.dumps(value, ensure_ascii=False)


def event_frame(event: pb.ReplyEvent) -> bytes | None:
    """The SSE frame of one reply event; a delta's id is the offset just after its text, in code points.

    None for an event of a kind this gateway does not know (a newer genservice): it is skipped.
    """
    kind = event.WhichOneof("event")
    if kind == "started":
        started = event.started
        return sse.encode(
            _json({"message_id": started.message_id, "conversation_id": started.conversation_id}), event="started"
        )
    if kind == "delta":
        return delta_frame(event.delta.offset, event.delta.text)
    if kind == "finished":
        return sse.encode(_json({"message": message(event.finished.message)}), event="finished")
    return None


def delta_frame(offset: int, text: str) -> bytes:
    """A delta's frame, built directly: it is the one frame sent per token, and its JSON holds no line break."""
    end = offset + len(text)
    return b"id: %d\nevent: delta\ndata: %b\n\n" % (end, _DELTA_ENCODER.encode(_DeltaView(text, offset)))


def is_finished(event: pb.ReplyEvent) -> bool:
    return event.WhichOneof("event") == "finished"
