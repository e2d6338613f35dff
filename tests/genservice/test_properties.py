"""Property-based and fuzz tests: random cuts join exactly; random requests never crash or write."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genservice.v1 import genservice_pb2 as pb
from genservice.v1 import genservice_pb2_grpc as pb_grpc
from tests.support.grpc_replies import assert_streaming, collect, joined, read_started, read_text
from tests.support.model_server import ModelServer, expected_reply

CONTENT = "cut me anywhere [[len=1200 chunk=7]]"
EXPECTED = expected_reply(CONTENT)


async def test_resuming_a_live_reply_at_random_cuts_joins_exactly(stub, model_server: ModelServer):
    """A caller that stops at cuts around the saves and resumes each time, while the reply is being written."""
    user_id = f"user-{uuid.uuid4().hex[:8]}"
    with model_server.gate() as gate:
        content = f"cut me while live [[len=1200 chunk=7 {gate.at(1000)}]]"
        expected = expected_reply(content)
        call = stub.StreamReply(pb.StreamReplyRequest(user_id=user_id, content=content))
        message_id = (await read_started(call)).message_id
        text = ""
        for cut in (0, 1, 5, 199, 200, 201, 333, 600, 999, len(expected)):
            if cut == len(expected):
                # every cut before this one was resumed while the reply was still being written
                await assert_streaming(stub, user_id, message_id)
                gate.release()
            watch = stub.WatchReply(pb.WatchReplyRequest(user_id=user_id, message_id=message_id, offset=len(text)))
            await read_started(watch)
            async with asyncio.timeout(10):
                while len(text) < cut:
                    event = await watch.read()
                    if event.HasField("delta"):
                        assert event.delta.offset == len(text)
                        text += event.delta.text
                    if event.HasField("finished"):
                        break
            watch.cancel()
        call.cancel()
    assert text == expected


HELD_AT = 600


@pytest.fixture(scope="module")
async def held_reply(genservice_target: str, model_server: ModelServer) -> AsyncIterator[tuple[str, str, str]]:
    """A reply running in the test's genservice, held at a gate: its user, its id and its text so far."""
    user_id = f"user-{uuid.uuid4().hex[:8]}"
    with model_server.gate() as gate:
        content = f"held for cuts [[len=1200 chunk=7 {gate.at(HELD_AT)}]]"
        async with grpc.aio.insecure_channel(genservice_target) as channel:
            call = pb_grpc.GenerationServiceStub(channel).StreamReply(
                pb.StreamReplyRequest(user_id=user_id, content=content)
            )
            message_id = (await read_started(call)).message_id
            await read_text(call, HELD_AT)
            yield user_id, message_id, expected_reply(content)[:HELD_AT]
            call.cancel()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=0, max_value=HELD_AT))
async def test_a_live_reply_watched_from_its_owners_memory_at_any_offset_joins_exactly(held_reply, stub, cut):
    user_id, message_id, so_far = held_reply
    watch = stub.WatchReply(pb.WatchReplyRequest(user_id=user_id, message_id=message_id, offset=cut))
    started = await read_started(watch)
    text = await read_text(watch, HELD_AT - cut)
    watch.cancel()
    assert started.message_id == message_id
    assert so_far[:cut] + text == so_far
    await assert_streaming(stub, user_id, message_id)


@pytest.fixture(scope="session")
async def finished_reply(genservice_target: str) -> tuple[str, str]:
    user_id = f"user-{uuid.uuid4().hex[:8]}"
    async with grpc.aio.insecure_channel(genservice_target) as channel:
        stub = pb_grpc.GenerationServiceStub(channel)
        events = await collect(stub.StreamReply(pb.StreamReplyRequest(user_id=user_id, content=CONTENT)))
    return user_id, events[0].started.message_id


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=0, max_value=len(EXPECTED)))
async def test_a_finished_reply_resumed_at_any_offset_joins_exactly(finished_reply, stub, cut):
    user_id, message_id = finished_reply
    events = await collect(stub.WatchReply(pb.WatchReplyRequest(user_id=user_id, message_id=message_id, offset=cut)))
    assert EXPECTED[:cut] + joined(events) == EXPECTED
    assert events[-1].finished.message.content == EXPECTED


fields = st.text(max_size=60) | st.sampled_from(
    ["", " ", "a\x00b", str(uuid.uuid4()), "00000000-0000-0000-0000-000000000000"]
)
offsets = st.integers(min_value=-(2**63), max_value=2**63 - 1)


async def _count_rows(pool) -> int:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT (SELECT count(*) FROM messages) + (SELECT count(*) FROM conversations) AS n"
        )
        row = await cursor.fetchone()
    return int(row["n"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rpc=st.sampled_from(
        ["GetMessage", "CancelReply", "ListMessages", "ListConversations", "WatchReply", "StreamReply"]
    ),
    user_id=fields,
    some_id=fields,
    offset=offsets,
    page_size=st.integers(min_value=-(2**31), max_value=2**31 - 1),
    page_token=fields,
)
async def test_random_requests_get_a_canonical_error_and_write_nothing(
    stub, pool, rpc, user_id, some_id, offset, page_size, page_token
):
    before = await _count_rows(pool)
    request = {
        "GetMessage": pb.GetMessageRequest(user_id=user_id, message_id=some_id),
        "CancelReply": pb.CancelReplyRequest(user_id=user_id, message_id=some_id),
        "ListMessages": pb.ListMessagesRequest(user_id=user_id, conversation_id=some_id),
        "ListConversations": pb.ListConversationsRequest(user_id=user_id, page_size=page_size, page_token=page_token),
        "WatchReply": pb.WatchReplyRequest(user_id=user_id, message_id=some_id, offset=offset),
        # a conversation that is not this user's: refused before anything is written
        "StreamReply": pb.StreamReplyRequest(user_id=user_id, conversation_id=some_id or "x", content=page_token),
    }[rpc]
    call = getattr(stub, rpc)(request, timeout=10)
    try:
        if rpc in ("WatchReply", "StreamReply"):
            await collect(call)
        else:
            await call
    except grpc.aio.AioRpcError as exc:
        assert exc.code() in (
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.NOT_FOUND,
        ), (exc.code(), exc.details())
        assert exc.details()
    assert await _count_rows(pool) == before
