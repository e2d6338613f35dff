"""The gateway's pure parts: SSE framing, events and JSON as a browser sees them, configuration, input."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import sse, views
from gateway.config import GatewayConfig
from gateway.errors import ApiError
from gateway.payloads import ReplyRequest, is_json_media_type, parse_page_size, resume_offset
from genservice.replies.settings import ConfigError
from genservice.v1 import genservice_pb2 as pb
from tests.support.gateway_harness import Comment, Event, joined, parse


def frame(event: pb.ReplyEvent) -> bytes:
    encoded = views.event_frame(event)
    assert encoded is not None
    return encoded


def test_an_event_of_an_unknown_kind_is_skipped() -> None:
    assert views.event_frame(pb.ReplyEvent()) is None


def test_an_event_is_its_fields_then_a_blank_line() -> None:
    assert sse.encode('{"a": 1}', event="delta", id="42") == b'id: 42\nevent: delta\ndata: {"a": 1}\n\n'
    assert sse.encode("x") == b"data: x\n\n"
    assert sse.encode("", event="e") == b"event: e\ndata: \n\n"


def test_multi_line_data_becomes_several_data_lines_whatever_the_line_break() -> None:
    assert sse.encode("one\ntwo\r\nthree\rfour") == b"data: one\ndata: two\ndata: three\ndata: four\n\n"
    assert parse(sse.encode("a\n\nb\n").decode()) == [Event("message", "a\n\nb\n", None)]


def test_id_and_event_cannot_hold_a_line_break() -> None:
    for bad in ("4\n2", "4\r2"):
        with pytest.raises(ValueError):
            sse.encode("x", id=bad)
        with pytest.raises(ValueError):
            sse.encode("x", event=bad)
    with pytest.raises(ValueError):
        sse.encode("x", id="4\x002")
    with pytest.raises(ValueError):
        sse.encode()


def test_a_ping_is_a_comment_that_clients_ignore() -> None:
    assert sse.PING == sse.comment("ping") == b": ping\n\n"
    assert sse.comment("a\nb") == b": a\n: b\n\n"
    assert parse((sse.PING + sse.encode("x")).decode()) == [Comment("ping"), Event("message", "x", None)]


def test_retry() -> None:
    assert sse.encode(retry=1500) == b"retry: 1500\n\n"
    with pytest.raises(ValueError):
        sse.encode(retry=-1)


@given(data=st.text(), event=st.text().filter(lambda s: "\r" not in s and "\n" not in s))
def test_any_text_survives_framing_as_a_standard_parser_reads_it(data: str, event: str) -> None:
    frame = sse.encode(data, event=event or None)
    [parsed] = parse(frame.decode())
    assert isinstance(parsed, Event)
    # the standard parser turns every line break into LF and strips one space after the colon
    normalized = data.replace("\r\n", "\n").replace("\r", "\n")
    assert parsed.data == normalized
    assert parsed.event == (event or "message")


@given(texts=st.lists(st.text(min_size=1), min_size=1, max_size=8), start=st.integers(0, 10**6))
def test_a_delta_id_is_the_code_point_offset_after_its_text(texts: list[str], start: int) -> None:
    frames = b""
    offset = start
    for text in texts:
        frames += frame(pb.ReplyEvent(delta=pb.ReplyDelta(text=text, offset=offset)))
        offset += len(text)
    events = [item for item in parse(frames.decode()) if isinstance(item, Event)]
    # JSON escapes line breaks, so the text comes back exactly
    assert joined(events) == "".join(texts)
    assert events[-1].id == str(offset)
    assert [e.json()["offset"] for e in events][0] == start


def test_astral_characters_count_as_one() -> None:
    [event] = parse(frame(pb.ReplyEvent(delta=pb.ReplyDelta(text="a🚀𝄞é", offset=10))).decode())
    assert isinstance(event, Event)
    assert event.id == "14"
    assert event.json() == {"text": "a🚀𝄞é", "offset": 10}


def message(**fields: object) -> pb.Message:
    msg = pb.Message(
        id="m1",
        conversation_id="c1",
        role=pb.ROLE_ASSISTANT,
        content="hi\nthere",
        status=pb.MESSAGE_STATUS_COMPLETE,
        model="demo",
        finish_reason="stop",
        **fields,  # type: ignore[arg-type]
    )
    msg.created_at.FromDatetime(datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=UTC))
    msg.updated_at.FromDatetime(datetime(2025, 1, 2, 3, 4, 6, tzinfo=UTC))
    return msg


def test_started_and_finished_events_are_the_contracts_json() -> None:
    started = frame(pb.ReplyEvent(started=pb.ReplyStarted(message_id="m1", conversation_id="c1")))
    assert parse(started.decode()) == [Event("started", '{"message_id": "m1", "conversation_id": "c1"}', None)]
    [finished] = parse(frame(pb.ReplyEvent(finished=pb.ReplyFinished(message=message()))).decode())
    assert isinstance(finished, Event) and finished.event == "finished" and finished.id is None
    assert finished.json() == {
        "message": {
            "id": "m1",
            "conversation_id": "c1",
            "role": "assistant",
            "content": "hi\nthere",
            "status": "complete",
            "error": "",
            "model": "demo",
            "finish_reason": "stop",
            "created_at": "2025-01-02T03:04:05.678000+00:00",
            "updated_at": "2025-01-02T03:04:06+00:00",
        }
    }


def test_statuses_are_lower_case_and_usage_appears_only_when_reported() -> None:
    names = {
        pb.MESSAGE_STATUS_STREAMING: "streaming",
        pb.MESSAGE_STATUS_COMPLETE: "complete",
        pb.MESSAGE_STATUS_ERROR: "error",
        pb.MESSAGE_STATUS_CANCELLED: "cancelled",
    }
    for status, name in names.items():
        assert views.message(pb.Message(status=status))["status"] == name
    assert views.message(pb.Message(role=pb.ROLE_USER))["role"] == "user"
    with_usage = views.message(message(usage=pb.Usage(prompt_tokens=3, completion_tokens=4, total_tokens=7)))
    assert with_usage["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert "usage" not in views.message(message())


def test_a_conversation() -> None:
    conv = pb.Conversation(id="c1", title="Hello")
    conv.updated_at.FromDatetime(datetime(2025, 1, 2, tzinfo=UTC))
    assert views.conversation(conv) == {
        "id": "c1",
        "title": "Hello",
        "created_at": None,
        "updated_at": "2025-01-02T00:00:00+00:00",
    }


def test_config_defaults_and_environment() -> None:
    config = GatewayConfig.from_env({})
    assert (config.host, config.port, config.genservice_target) == ("127.0.0.1", 8080, "127.0.0.1:50051")
    assert config.jwt_secret is None and config.ping_seconds == 15 and config.max_body_bytes == 256 * 1024
    config = GatewayConfig.from_env(
        {
            "GATEWAY_ADDR": "0.0.0.0:9000",
            "GENSERVICE_TARGET": "dns:///genservice:50051",
            "GATEWAY_JWT_SECRET": "s" * 40,
            "MAX_BODY_BYTES": "1000",
            "PING_SECONDS": "0.5",
            "SHUTDOWN_GRACE_SECONDS": "3",
        }
    )
    assert (config.host, config.port, config.genservice_target) == ("0.0.0.0", 9000, "dns:///genservice:50051")
    assert (config.max_body_bytes, config.ping_seconds, config.shutdown_grace_seconds) == (1000, 0.5, 3.0)
    assert "s" * 40 not in repr(config)


@pytest.mark.parametrize(
    "env",
    [
        {"GATEWAY_ADDR": "nope"},
        {"MAX_BODY_BYTES": "big"},
        {"PING_SECONDS": "0"},
        {"DATABASE_URL": "mysql://x"},
        {"SHUTDOWN_GRACE_SECONDS": "-1"},
    ],
)
def test_a_bad_setting_is_refused_with_its_name(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=next(iter(env))):
        GatewayConfig.from_env(env)


def test_resume_offset_prefers_last_event_id_then_the_query() -> None:
    assert resume_offset(None, None) == 0
    assert resume_offset(None, "12") == 12
    assert resume_offset("30", "12") == 30
    assert resume_offset("", "12") == 12
    for bad in ("-1", "1.5", "x", "١٢", "99999999999999999999999"):
        with pytest.raises(ApiError) as caught:
            resume_offset(bad, None)
        assert caught.value.status == 400
        with pytest.raises(ApiError):
            resume_offset(None, bad)


def test_page_size() -> None:
    assert parse_page_size(None) == 0 and parse_page_size("25") == 25
    with pytest.raises(ApiError):
        parse_page_size("many")


def test_reply_request_fields_have_types() -> None:
    assert ReplyRequest.from_json({"content": "hi", "conversation_id": None, "x": 1}) == ReplyRequest("hi")
    assert ReplyRequest.from_json({"content": "hi", "interrupt": True, "model": "m"}).interrupt
    bodies: list[object] = [
        [],
        "hi",
        {},
        {"content": 3},
        {"content": "hi", "interrupt": "yes"},
        {"content": "hi", "model": 1},
    ]
    for bad in bodies:
        with pytest.raises(ApiError) as caught:
            ReplyRequest.from_json(bad)
        assert caught.value.status == 422


def test_json_media_types() -> None:
    assert is_json_media_type("application/json")
    assert is_json_media_type("Application/JSON; charset=utf-8")
    assert is_json_media_type("application/merge-patch+json")
    assert not is_json_media_type("text/plain")
    assert not is_json_media_type(None)
