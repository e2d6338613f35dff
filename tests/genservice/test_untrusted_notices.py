"""A role with no privilege on our tables NOTIFYs on our channel: junk, a forged end, forged text. Nobody is fooled."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from psycopg import sql
from psycopg.conninfo import make_conninfo

from genservice.replies.notices import CHANNEL
from genservice.v1 import genservice_pb2 as pb
from tests.support.grpc_replies import assert_streaming, collect, joined, read_to_the_gate
from tests.support.model_server import ModelServer, expected_reply


@pytest.fixture
async def intruder(database_url: str) -> AsyncIterator[psycopg.AsyncConnection]:
    """A connection as a role created with LOGIN and nothing else."""
    role = f"intruder_{uuid.uuid4().hex[:8]}"
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as admin:
        await admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        try:
            async with await psycopg.AsyncConnection.connect(
                make_conninfo(database_url, user=role, password=""), autocommit=True
            ) as conn:
                yield conn
        finally:
            await admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def forgeries(message_id: str) -> list[str]:
    now = time.time()
    return [
        "not json",
        "[" * 7_000,
        json.dumps({"m": message_id}),
        # a forged end, a forged stop, and forged text far ahead
        json.dumps({"m": message_id, "s": "complete", "e": 5, "ts": now}),
        json.dumps({"m": message_id, "s": "cancelled", "e": 5, "ts": now}),
        json.dumps({"m": message_id, "s": "streaming", "e": 5, "ts": now, "c": 1}),
        json.dumps({"m": message_id, "s": "streaming", "e": 10**6, "o": 0, "t": "INJECTED", "ts": now}),
        json.dumps({"m": message_id, "s": "streaming", "e": 10**6, "ts": now}),
    ]


async def test_forged_notices_neither_stop_nor_end_nor_inject_and_the_listener_lives(
    stub, genservice_target, intruder, model_server: ModelServer
):
    user_id = f"user-{uuid.uuid4().hex[:8]}"
    await intruder.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
    with model_server.gate() as gate:
        content = f"under attack [[len=3000 {gate.at(300)}]]"
        call = stub.StreamReply(pb.StreamReplyRequest(user_id=user_id, content=content))
        message_id = (await read_to_the_gate(call, 300, stub, user_id))[0].message_id
        watch = stub.WatchReply(pb.WatchReplyRequest(user_id=user_id, message_id=message_id))
        assert (await watch.read()).HasField("started")

        forged = forgeries(message_id)
        for payload in forged:
            await intruder.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
        await assert_streaming(stub, user_id, message_id)
        gate.release()
        owner_events, watched = await asyncio.gather(collect(call), collect(watch))

    expected = expected_reply(content)
    final = owner_events[-1].finished.message
    assert final.status == pb.MESSAGE_STATUS_COMPLETE and final.content == expected
    assert joined(watched) == expected and watched[-1].finished.message.content == expected

    # what the intruder heard of ours carries no text
    heard = []
    async with asyncio.timeout(5):
        async for notify in intruder.notifies(timeout=0.5):
            heard.append(notify.payload)
    ours = [json.loads(p) for p in heard if p not in forged and p.startswith('{"m"')]
    assert ours and all(set(n) <= {"m", "s", "e", "ts", "c"} for n in ours)

    # the listener is alive: health says so, and a new follower of a live reply still gets the truth
    async with grpc.aio.insecure_channel(genservice_target) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    with model_server.gate() as gate:
        second = f"after the attack [[len=600 {gate.at(100)}]]"
        call = stub.StreamReply(pb.StreamReplyRequest(user_id=user_id, content=second))
        message_id = (await read_to_the_gate(call, 100, stub, user_id))[0].message_id
        watch = stub.WatchReply(pb.WatchReplyRequest(user_id=user_id, message_id=message_id))
        assert (await watch.read()).HasField("started")
        gate.release()
        watched = await collect(watch)
    assert joined(watched) == expected_reply(second)
    call.cancel()


async def test_a_lost_notification_costs_latency_not_a_hang(stub, pool):
    """Text saved and an end written with no NOTIFY at all still reach a follower, within the idle bound."""
    user_id, conversation_id, message_id = "quiet-user", str(uuid.uuid4()), str(uuid.uuid4())
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO conversations (id, user_id, title) VALUES (%s, %s, 'quiet')", (conversation_id, user_id)
        )
        await conn.execute(
            "INSERT INTO messages (id, conversation_id, user_id, role, status, lease_owner, lease_expires_at)"
            " VALUES (%s, %s, %s, 'assistant', 'streaming', 'elsewhere', clock_timestamp() + interval '1 minute')",
            (message_id, conversation_id, user_id),
        )
    watch = stub.WatchReply(pb.WatchReplyRequest(user_id=user_id, message_id=message_id))
    assert (await watch.read()).HasField("started")
    async with pool.connection() as conn:
        await conn.execute("INSERT INTO message_saves VALUES (%s, 0, 'said quietly')", (message_id,))
    async with asyncio.timeout(5):
        delta = (await watch.read()).delta
    assert (delta.offset, delta.text) == (0, "said quietly")
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE messages SET status = 'complete', content = 'said quietly, the end', lease_owner = NULL"
            " WHERE id = %s",
            (message_id,),
        )
    rest = await collect(watch, seconds=5)
    assert rest[0].delta.text == ", the end" and rest[-1].finished.message.status == pb.MESSAGE_STATUS_COMPLETE
