"""The Vercel AI SDK's UI message stream (protocol v1): reply events as the chunks its chat client reads.

Pure functions from reply events to bytes. Each chunk is one `data: <json>` event carrying only the
SDK's own fields (some SDK releases reject unknown ones). A reply is one text part; the stream
starts the message under the server's message id, so a replayed reply replaces the client's
partial copy instead of doubling it, and ends by the reply's status, then `[DONE]`.
"""

from __future__ import annotations

import json

from gateway import sse
from genservice.v1 import genservice_pb2 as pb

HEADERS = {**sse.HEADERS, "x-vercel-ai-ui-message-stream": "v1"}
# the one text part of a reply; an id need only be the same in its start, deltas and end
TEXT_ID = "t1"
DONE = sse.encode("[DONE]")
FAILED = "the reply failed"

Chunk = dict[str, str]


def encode(chunk: Chunk) -> bytes:
    return sse.encode(json.dumps(chunk, ensure_ascii=False, separators=(",", ":")))


def opening(message_id: str) -> list[Chunk]:
    return [{"type": "start", "messageId": message_id}, {"type": "start-step"}, {"type": "text-start", "id": TEXT_ID}]


def ending(message: pb.Message) -> list[Chunk]:
    """COMPLETE: finish; ERROR: error with the message's reason; CANCELLED: abort."""
    end: list[Chunk] = [{"type": "text-end", "id": TEXT_ID}]
    if message.status == pb.MESSAGE_STATUS_COMPLETE:
        return [*end, {"type": "finish-step"}, {"type": "finish"}]
    if message.status == pb.MESSAGE_STATUS_CANCELLED:
        return [*end, {"type": "abort"}]
    return [*end, {"type": "error", "errorText": message.error or FAILED}]


def frames(event: pb.ReplyEvent) -> bytes | None:
    """The chunks of one reply event; None for an empty delta or an event of a kind this gateway does not know."""
    kind = event.WhichOneof("event")
    if kind == "started":
        return b"".join(map(encode, opening(event.started.message_id)))
    if kind == "delta":
        if not event.delta.text:
            return None
        return encode({"type": "text-delta", "id": TEXT_ID, "delta": event.delta.text})
    if kind == "finished":
        return b"".join(map(encode, ending(event.finished.message))) + DONE
    return None
