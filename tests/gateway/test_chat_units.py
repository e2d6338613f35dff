"""The AI SDK transport's pure pieces: the chunks of each event, the POST body's checks, the idempotency key."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway import ui_stream
from gateway.chat import request_id
from gateway.errors import ApiError
from gateway.payloads import ChatRequest
from genservice.v1 import genservice_pb2 as pb


def chunks(frames: bytes | None) -> list[Any]:
    """The data of each event, as the SDK's parser reads it (every event one data line)."""
    assert frames is not None and frames.endswith(b"\n\n")
    events = frames.decode().split("\n\n")[:-1]
    assert all(event.startswith("data: ") and "\n" not in event for event in events)
    return [event[6:] if event[6:] == "[DONE]" else json.loads(event[6:]) for event in events]


def finished(status: pb.MessageStatus.ValueType, error: str = "") -> pb.ReplyEvent:
    return pb.ReplyEvent(finished=pb.ReplyFinished(message=pb.Message(id="m", status=status, error=error)))


def test_started_opens_the_message_under_the_servers_id_and_one_text_part():
    event = pb.ReplyEvent(started=pb.ReplyStarted(message_id="m1", conversation_id="c1"))
    assert chunks(ui_stream.frames(event)) == [
        {"type": "start", "messageId": "m1"},
        {"type": "start-step"},
        {"type": "text-start", "id": "t1"},
    ]


def test_a_delta_is_one_data_line_whatever_its_text():
    text = "two\nlines\r\nand 🚀 \u2028"
    event = pb.ReplyEvent(delta=pb.ReplyDelta(text=text, offset=7))
    assert chunks(ui_stream.frames(event)) == [{"type": "text-delta", "id": "t1", "delta": text}]
    assert ui_stream.frames(pb.ReplyEvent(delta=pb.ReplyDelta(text="", offset=7))) is None
    assert ui_stream.frames(pb.ReplyEvent()) is None


@pytest.mark.parametrize(
    ("status", "error", "ending"),
    [
        (pb.MESSAGE_STATUS_COMPLETE, "", [{"type": "finish-step"}, {"type": "finish"}]),
        (pb.MESSAGE_STATUS_CANCELLED, "", [{"type": "abort"}]),
        (pb.MESSAGE_STATUS_ERROR, "the model failed", [{"type": "error", "errorText": "the model failed"}]),
        (pb.MESSAGE_STATUS_ERROR, "", [{"type": "error", "errorText": ui_stream.FAILED}]),
    ],
)
def test_the_end_follows_the_status_then_done(status, error, ending):
    assert chunks(ui_stream.frames(finished(status, error))) == [{"type": "text-end", "id": "t1"}, *ending, "[DONE]"]


def body(**changes: Any) -> dict[str, Any]:
    message = {"id": "u2", "role": "user", "parts": [{"type": "text", "text": "hello"}, {"type": "file"}]}
    earlier = [{"id": "u1", "role": "user", "parts": []}, {"id": "a1", "role": "assistant", "parts": []}]
    return {"id": "chat/1", "messages": [*earlier, message], "trigger": "submit-message", **changes}


def test_only_the_last_user_message_is_new():
    chat = ChatRequest.from_json(body())
    assert (chat.chat_id, chat.message_id, chat.text, chat.regenerate) == ("chat/1", "u2", "hello", False)
    again = ChatRequest.from_json(body(trigger="regenerate-message", messageId="a2"))
    assert (again.regenerate, again.replaced_id) == (True, "a2")


@pytest.mark.parametrize(
    "changes",
    [
        {"id": ""},
        {"id": "c" * 201},
        {"id": 5},
        {"trigger": "resume-stream"},
        {"messages": {}},
        {"messages": [{"id": "a", "role": "assistant", "parts": []}]},
        {"messages": [{"id": "", "role": "user", "parts": [{"type": "text", "text": "hi"}]}]},
        {"messages": [{"id": "u", "role": "user", "parts": [{"type": "text", "text": 1}]}]},
        {"messages": [{"id": "u", "role": "user", "parts": [{"type": "text", "text": "  "}]}]},
        {"messageId": 3},
    ],
)
def test_a_body_of_the_wrong_shape_is_refused(changes):
    with pytest.raises(ApiError) as refused:
        ChatRequest.from_json(body(**changes))
    assert refused.value.status in (400, 422)


def test_the_key_is_the_same_for_a_retry_and_new_for_another_message_or_regenerate():
    chat = ChatRequest.from_json(body())
    assert request_id(chat, "") == request_id(ChatRequest.from_json(body()), "")
    assert len(request_id(chat, "")) <= 200
    other_chat = ChatRequest.from_json(body(id="chat/2"))
    regenerate = ChatRequest.from_json(body(trigger="regenerate-message"))
    keys = {
        request_id(chat, ""),
        request_id(other_chat, ""),
        request_id(regenerate, "a1"),
        request_id(regenerate, "a2"),
    }
    assert len(keys) == 4
