"""genservice as a caller sees it: replies saved whole, whatever the caller does."""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from typing import Any

import grpc
import psycopg
import pytest

from genservice.replies.notices import CHANNEL
from genservice.v1 import genservice_pb2 as pb
from tests.support.grpc_replies import (
    assert_streaming,
    collect,
    joined,
    read_started,
    read_to_the_gate,
    wait_until_ended,
)
from tests.support.model_server import ModelServer, expected_reply

SLOW = "chunk=5 delay=0.004"


def user() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


async def start(stub, user_id: str, content: str, **fields):
    """Start a reply and read up to its `started` event; the call stays open."""
    call = stub.StreamReply(pb.StreamReplyRequest(user_id=user_id, content=content, **fields))
    return call, await read_started(call)


async def test_a_reply_streams_and_is_saved_complete(stub):
    user_id, content = user(), f"tell me something [[len=900 {SLOW}]]"
    events = await collect(stub.StreamReply(pb.StreamReplyRequest(user_id=user_id, content=content)))

    assert events[0].HasField("started")
    assert joined(events) == expected_reply(content)
    final = events[-1].finished.message
    assert final.status == pb.MESSAGE_STATUS_COMPLETE
    assert final.content == expected_reply(content)
    assert final.finish_reason == "stop"
    assert final.usage.total_tokens > 0
    saved = await stub.GetMessage(pb.GetMessageRequest(user_id=user_id, message_id=final.id))
    assert saved.content == expected_reply(content)


async def test_a_call_cancelled_half_way_still_saves_the_whole_reply(stub, model_server: ModelServer):
    with model_server.gate() as gate:
        user_id, content = user(), f"long one [[len=3000 {gate.at(500)}]]"
        call = stub.StreamReply(pb.StreamReplyRequest(user_id=user_id, content=content))
        started, received = await read_to_the_gate(call, 500, stub, user_id)
        call.cancel()

    saved = await wait_until_ended(stub, user_id, started.message_id)
    assert saved.status == pb.MESSAGE_STATUS_COMPLETE
    assert saved.content == expected_reply(content)
    assert saved.content.startswith(received)


async def test_saves_come_every_200_characters_and_each_notify_matches_saved_text(stub, database_url, pool):
    user_id, content = user(), "watch the saves [[len=2000 chunk=3 delay=0.002]]"
    expected = expected_reply(content)
    notices: list[dict[str, Any]] = []
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as listener:
        await listener.execute(f"LISTEN {CHANNEL}")
        call, started = await start(stub, user_id, content)
        message_id = started.message_id
        async with asyncio.timeout(15):
            async for notify in listener.notifies():
                notice = json.loads(notify.payload)
                if notice["m"] != message_id:
                    continue
                if notice["s"] == "streaming":
                    # what the notice announces is already saved, exactly
                    async with pool.connection() as conn:
                        cursor = await conn.execute(
                            "SELECT string_agg(text, '' ORDER BY start_offset) AS text FROM message_saves"
                            " WHERE message_id = %s",
                            (message_id,),
                        )
                        row = await cursor.fetchone()
                    saved = row["text"] if row and row["text"] else ""
                    if saved:  # empty only once the end has compacted the saves
                        assert saved[: notice["e"]] == expected[: notice["e"]]
                        assert len(saved) >= notice["e"]
                notices.append(notice)
                if notice["s"] != "streaming":
                    break
        call.cancel()

    saves = [n for n in notices if n["s"] == "streaming"]
    assert notices[-1]["s"] == "complete" and notices[-1]["e"] == len(expected)
    ends = [0] + [n["e"] for n in saves]
    assert all(0 < b - a <= 200 for a, b in itertools.pairwise(ends)), ends
    # no reply text travels in a payload: any role may LISTEN
    assert all(set(n) <= {"m", "s", "e", "ts", "c"} for n in notices)


async def test_a_model_error_mid_stream_keeps_the_partial_text_as_error(stub):
    user_id, content = user(), f"break [[len=800 error_after=300 {SLOW}]]"
    events = await collect(stub.StreamReply(pb.StreamReplyRequest(user_id=user_id, content=content)))
    final = events[-1].finished.message
    assert final.status == pb.MESSAGE_STATUS_ERROR
    assert final.content == expected_reply(content)[:300]
    assert "model" in final.error
    assert joined(events) == final.content


async def test_a_dropped_model_connection_keeps_the_partial_text_as_error(stub):
    user_id, content = user(), f"drop [[len=800 drop_after=250 {SLOW}]]"
    events = await collect(stub.StreamReply(pb.StreamReplyRequest(user_id=user_id, content=content)))
    final = events[-1].finished.message
    assert final.status == pb.MESSAGE_STATUS_ERROR
    assert final.content == expected_reply(content)[:250]


async def test_a_model_that_refuses_before_the_first_token_ends_error_with_a_reason(stub):
    user_id, content = user(), "no [[status=401]]"
    events = await collect(stub.StreamReply(pb.StreamReplyRequest(user_id=user_id, content=content)))
    final = events[-1].finished.message
    assert final.status == pb.MESSAGE_STATUS_ERROR
    assert final.content == ""
    assert "401" in final.error


async def test_cancel_reply_stops_the_generation_and_keeps_the_text(stub, model_server: ModelServer):
    with model_server.gate() as gate:
        user_id, content = user(), f"stop me [[len=5000 {gate.at(100)}]]"
        call = stub.StreamReply(pb.StreamReplyRequest(user_id=user_id, content=content))
        started, received = await read_to_the_gate(call, 100, stub, user_id)
        cancelled = await stub.CancelReply(pb.CancelReplyRequest(user_id=user_id, message_id=started.message_id))
        assert cancelled.status == pb.MESSAGE_STATUS_CANCELLED
        # every character the generation had, and not one more
        assert cancelled.content == expected_reply(content)[:100]
        rest = await collect(call)
    assert rest[-1].finished.message.status == pb.MESSAGE_STATUS_CANCELLED
    assert received + joined(rest) == cancelled.content


@pytest.mark.parametrize("cut", ["start", "middle", "end"])
async def test_watch_reply_from_any_offset_joins_exactly_live_and_finished(stub, model_server: ModelServer, cut):
    with model_server.gate() as gate:
        user_id, content = user(), f"watch me [[len=1500 {gate.at(777)}]]"
        expected = expected_reply(content)
        offset = {"start": 0, "middle": 777, "end": len(expected)}[cut]
        call, started = await start(stub, user_id, content)
        await gate.reached()
        await assert_streaming(stub, user_id, started.message_id)
        watch = pb.WatchReplyRequest(user_id=user_id, message_id=started.message_id, offset=offset)
        live_call = stub.WatchReply(watch)
        await read_started(live_call)
        gate.release()
        live = await collect(live_call)
    call.cancel()
    finished = await collect(stub.WatchReply(watch))

    for events in (live, finished):
        assert expected[:offset] + joined(events) == expected
        assert events[-1].finished.message.content == expected
        assert events[-1].finished.message.status == pb.MESSAGE_STATUS_COMPLETE


async def test_the_idempotency_key_starts_no_second_generation(stub, model_server: ModelServer):
    with model_server.gate() as gate:
        user_id, content, key = user(), f"once only [[len=400 {gate.at(100)}]]", uuid.uuid4().hex
        request = pb.StreamReplyRequest(user_id=user_id, content=content, request_id=key)
        first_call, started = await start(stub, user_id, content, request_id=key)
        await gate.reached()
        await assert_streaming(stub, user_id, started.message_id)
        # the same request again while the first one streams: it joins that generation
        second_call = stub.StreamReply(request)
        assert (await read_started(second_call)).message_id == started.message_id
        gate.release()
        first, second = await asyncio.gather(collect(first_call), collect(second_call))
    retry = await collect(stub.StreamReply(request))

    assert retry[0].started.message_id == started.message_id
    for events in (first, second, retry):
        assert joined(events) == expected_reply(content)
    sent_to_model = [r for r in model_server.requests if r["messages"][-1]["content"] == content]
    assert len(sent_to_model) == 1
    conversation = await stub.ListMessages(
        pb.ListMessagesRequest(user_id=user_id, conversation_id=started.conversation_id)
    )
    assert [m.role for m in conversation.messages] == [pb.ROLE_USER, pb.ROLE_ASSISTANT]


async def test_the_model_gets_the_conversation_history(stub, model_server: ModelServer):
    user_id = user()
    first = await collect(stub.StreamReply(pb.StreamReplyRequest(user_id=user_id, content="first question")))
    conversation_id = first[0].started.conversation_id
    await collect(
        stub.StreamReply(pb.StreamReplyRequest(user_id=user_id, conversation_id=conversation_id, content="second"))
    )
    sent = [r for r in model_server.requests if r["messages"][-1]["content"] == "second"][-1]["messages"]
    assert [(m["role"], m["content"]) for m in sent] == [
        ("user", "first question"),
        ("assistant", expected_reply("first question")),
        ("user", "second"),
    ]


async def test_a_second_message_while_one_streams_is_refused_unless_it_interrupts(stub, model_server: ModelServer):
    user_id = user()
    with model_server.gate() as gate:
        content = f"slow [[len=5000 {gate.at(50)}]]"
        call = stub.StreamReply(pb.StreamReplyRequest(user_id=user_id, content=content))
        started, received = await read_to_the_gate(call, 50, stub, user_id)
        again = pb.StreamReplyRequest(user_id=user_id, conversation_id=started.conversation_id, content="impatient")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await collect(stub.StreamReply(again))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert started.message_id in refused.value.details()

        await assert_streaming(stub, user_id, started.message_id)
        again.interrupt = True
        events = await collect(stub.StreamReply(again))
    assert events[-1].finished.message.status == pb.MESSAGE_STATUS_COMPLETE
    first = await stub.GetMessage(pb.GetMessageRequest(user_id=user_id, message_id=started.message_id))
    assert first.status == pb.MESSAGE_STATUS_CANCELLED
    assert first.content == received == expected_reply(content)[:50]
    call.cancel()


async def test_conversations_are_listed_most_recent_first_in_pages(stub):
    user_id = user()
    for n in range(3):
        await collect(stub.StreamReply(pb.StreamReplyRequest(user_id=user_id, content=f"topic {n}")))
    page = await stub.ListConversations(pb.ListConversationsRequest(user_id=user_id, page_size=2))
    assert [c.title for c in page.conversations] == ["topic 2", "topic 1"]
    rest = await stub.ListConversations(
        pb.ListConversationsRequest(user_id=user_id, page_size=2, page_token=page.next_page_token)
    )
    assert [c.title for c in rest.conversations] == ["topic 0"]
    assert rest.next_page_token == ""


async def _count_rows(pool) -> tuple[int, int]:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT (SELECT count(*) FROM messages) AS m, (SELECT count(*) FROM conversations) AS c"
        )
        row = await cursor.fetchone()
    return row["m"], row["c"]


@pytest.mark.parametrize(
    ("request_fields", "code"),
    [
        ({"content": ""}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"content": "   \n"}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"content": "hi", "user_id": ""}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"content": "hi", "conversation_id": "not-a-uuid"}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"content": "hi", "conversation_id": str(uuid.uuid4())}, grpc.StatusCode.NOT_FOUND),
        ({"content": "x" * 40_000}, grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
async def test_bad_input_gets_a_clear_code_and_writes_nothing(stub, pool, request_fields, code):
    before = await _count_rows(pool)
    fields = {"user_id": user(), **request_fields}
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await collect(stub.StreamReply(pb.StreamReplyRequest(**fields)))
    assert failed.value.code() == code
    assert failed.value.details()
    assert await _count_rows(pool) == before


async def test_another_users_conversation_and_message_are_as_if_absent(stub):
    owner, stranger = user(), user()
    events = await collect(stub.StreamReply(pb.StreamReplyRequest(user_id=owner, content="mine")))
    message_id, conversation_id = events[0].started.message_id, events[0].started.conversation_id
    calls = [
        stub.GetMessage(pb.GetMessageRequest(user_id=stranger, message_id=message_id)),
        stub.CancelReply(pb.CancelReplyRequest(user_id=stranger, message_id=message_id)),
        stub.ListMessages(pb.ListMessagesRequest(user_id=stranger, conversation_id=conversation_id)),
        collect(stub.WatchReply(pb.WatchReplyRequest(user_id=stranger, message_id=message_id))),
        collect(
            stub.StreamReply(pb.StreamReplyRequest(user_id=stranger, conversation_id=conversation_id, content="x"))
        ),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await call
        assert failed.value.code() == grpc.StatusCode.NOT_FOUND


async def test_watch_offsets_outside_the_message_are_invalid(stub):
    user_id = user()
    events = await collect(stub.StreamReply(pb.StreamReplyRequest(user_id=user_id, content="short")))
    message_id = events[0].started.message_id
    for offset in (-1, len(expected_reply("short")) + 1):
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await collect(stub.WatchReply(pb.WatchReplyRequest(user_id=user_id, message_id=message_id, offset=offset)))
        assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
