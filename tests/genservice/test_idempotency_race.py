"""Two starts with the same request_id into an existing conversation, held at a barrier and let go together."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest

from genservice.v1 import genservice_pb2 as pb
from tests.support.grpc_replies import assert_streaming, collect, joined, read_started
from tests.support.model_server import ModelServer, expected_reply


async def waiting_for_a_lock(conn: psycopg.AsyncConnection, at_least: int) -> None:
    """Until `at_least` backends of genservice wait for a lock (the barrier's row lock)."""
    async with asyncio.timeout(10):
        while True:
            cursor = await conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'genservice'"
                " AND wait_event_type = 'Lock'"
            )
            row = await cursor.fetchone()
            if row is not None and row[0] >= at_least:
                return
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("interrupt", [False, True])
async def test_both_callers_attach_to_one_reply(stub, database_url, model_server: ModelServer, interrupt):
    user_id, request_id = f"user-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    first = await collect(stub.StreamReply(pb.StreamReplyRequest(user_id=user_id, content="first [[len=20]]")))
    conversation_id = first[0].started.conversation_id
    with model_server.gate() as gate:
        content = f"raced {request_id} [[len=600 {gate.at(100)}]]"
        request = pb.StreamReplyRequest(
            user_id=user_id,
            conversation_id=conversation_id,
            content=content,
            request_id=request_id,
            interrupt=interrupt,
        )
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as barrier:
            async with barrier.transaction():
                await barrier.execute("SELECT 1 FROM conversations WHERE id = %s FOR UPDATE", (conversation_id,))
                calls = [stub.StreamReply(request) for _ in range(2)]
                racing = asyncio.gather(*(read_started(call) for call in calls))
                await waiting_for_a_lock(barrier, 2)
            # the barrier's transaction ends here: both starts go on at once
            first_start, second_start = await racing
        # both attached while the reply was held: neither replayed an ended one, and an interrupt stopped nothing
        await gate.reached()
        assert first_start.message_id == second_start.message_id
        await assert_streaming(stub, user_id, first_start.message_id)
        gate.release()
        one, two = await asyncio.gather(*(collect(call) for call in calls))

    for events in (one, two):
        assert events[-1].finished.message.status == pb.MESSAGE_STATUS_COMPLETE
        assert joined(events) == expected_reply(content)
    assert sum(1 for body in model_server.requests if request_id in body["messages"][-1]["content"]) == 1
