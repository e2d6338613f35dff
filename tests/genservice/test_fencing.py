"""Writes that must not be lost to timing: renewals under a full pool, the cancel fallback, a start at the drain."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import uuid
from collections.abc import Callable

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from genservice.config import GenServiceConfig
from genservice.replies.database import Pool
from genservice.server import running_service
from genservice.v1 import genservice_pb2 as pb
from genservice.v1 import genservice_pb2_grpc as pb_grpc
from tests.support.grpc_replies import assert_streaming, collect, joined, read_to_the_gate
from tests.support.model_server import ModelServer, expected_reply
from tests.support.processes import genservice_process


def user() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


async def waiting_for_a_lock(conn: psycopg.AsyncConnection, application_name: str, at_least: int) -> None:
    async with asyncio.timeout(15):
        while True:
            cursor = await conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'",
                (application_name,),
            )
            row = await cursor.fetchone()
            if row is not None and row[0] >= at_least:
                return
            await asyncio.sleep(0.02)


async def refused_or_done(call: grpc.aio.UnaryStreamCall) -> None:
    with contextlib.suppress(grpc.aio.AioRpcError):
        await collect(call)


async def read_code(stub: pb_grpc.GenerationServiceStub, user_id: str) -> grpc.StatusCode:
    """How a read of a message that does not exist fails: NOT_FOUND when it got a connection within a second."""
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub.GetMessage(pb.GetMessageRequest(user_id=user_id, message_id=str(uuid.uuid4())), timeout=1)
    return failed.value.code()


async def new_conversation(stub: pb_grpc.GenerationServiceStub, user_id: str) -> str:
    events = await collect(stub.StreamReply(pb.StreamReplyRequest(user_id=user_id, content="hello [[len=10]]")))
    return events[0].started.conversation_id


async def test_a_saturated_request_pool_cannot_get_a_healthy_reply_swept(
    genservice_config: GenServiceConfig, genservice_target: str, database_url: str, model_server: ModelServer
) -> None:
    """Every request connection waits on a lock the test holds, for three leases, while a reply is held at a gate;
    the reply renews and completes.

    The session's genservice runs beside it and sweeps any lease that expires.
    """
    config = dataclasses.replace(genservice_config, lease_seconds=1.0, pool_size=10)
    async with (
        running_service(config) as service,
        grpc.aio.insecure_channel(service.target) as channel,
        await psycopg.AsyncConnection.connect(database_url, autocommit=True) as barrier,
    ):
        stub = pb_grpc.GenerationServiceStub(channel)
        blocker, user_id = user(), user()
        blocked_conversation = await new_conversation(stub, blocker)
        with model_server.gate() as gate:
            content = f"keep renewing [[len=3000 {gate.at(300)}]]"
            reply = stub.StreamReply(pb.StreamReplyRequest(user_id=user_id, content=content))
            started, received = await read_to_the_gate(reply, 300, stub, user_id)
            async with barrier.transaction():
                await barrier.execute("SELECT 1 FROM conversations WHERE id = %s FOR UPDATE", (blocked_conversation,))
                request = pb.StreamReplyRequest(user_id=blocker, conversation_id=blocked_conversation, content="x")
                blocked = [
                    asyncio.create_task(refused_or_done(stub.StreamReply(request))) for _ in range(config.pool_size + 2)
                ]
                await waiting_for_a_lock(barrier, "genservice", 2)
                # saturated once every request connection waits on the lock: a read then finds none free
                async with asyncio.timeout(30):
                    while (code := await read_code(stub, blocker)) == grpc.StatusCode.NOT_FOUND:
                        await asyncio.sleep(0.05)
                # a busy pool queues a read until the request's deadline
                assert code == grpc.StatusCode.DEADLINE_EXCEEDED
                await asyncio.sleep(3 * config.lease_seconds)  # the fault's duration, not a synchronisation
            await assert_streaming(stub, user_id, started.message_id)
            gate.release()
            events = await collect(reply)
        await asyncio.gather(*blocked)

    final = events[-1].finished.message
    assert final.status == pb.MESSAGE_STATUS_COMPLETE, final.error
    assert final.content == expected_reply(content) == received + joined(events)


async def test_the_cancel_fallback_keeps_a_save_that_commits_while_it_waits(stub, pool: Pool, database_url) -> None:
    """The owner is silent; while the stop waits for it, a save commits: the CANCELLED text holds it."""
    user_id, conversation_id, message_id = user(), str(uuid.uuid4()), str(uuid.uuid4())
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO conversations (id, user_id, title) VALUES (%s, %s, 'x')", (conversation_id, user_id)
        )
        await conn.execute(
            "INSERT INTO messages (id, conversation_id, user_id, role, status, saved_length, lease_owner,"
            " lease_expires_at) VALUES (%s, %s, %s, 'assistant', 'streaming', 5, 'a-silent-owner',"
            " clock_timestamp() + interval '1 minute')",
            (message_id, conversation_id, user_id),
        )
        await conn.execute("INSERT INTO message_saves VALUES (%s, 0, 'first')", (message_id,))
    cancel = asyncio.ensure_future(stub.CancelReply(pb.CancelReplyRequest(user_id=user_id, message_id=message_id)))
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as owner:
        # wait for the stop to be recorded, then save as the owner would, holding the row until the fallback waits
        async with asyncio.timeout(10):
            while True:
                cursor = await owner.execute("SELECT cancel_requested FROM messages WHERE id = %s", (message_id,))
                row = await cursor.fetchone()
                if row is not None and row[0]:
                    break
                await asyncio.sleep(0.02)
        async with owner.transaction():
            await owner.execute("UPDATE messages SET saved_length = 11 WHERE id = %s", (message_id,))
            await owner.execute("INSERT INTO message_saves VALUES (%s, 5, ' later')", (message_id,))
            await waiting_for_a_lock(owner, "genservice", 1)
    ended = await asyncio.wait_for(cancel, 15)

    assert ended.status == pb.MESSAGE_STATUS_CANCELLED
    assert ended.content == "first later"


async def test_a_start_admitted_before_the_drain_is_launched_and_drained_never_left_streaming(
    database_url: str, model_server: ModelServer, pool: Pool
) -> None:
    env = {"DATABASE_URL": database_url, "OPENAI_BASE_URL": model_server.base_url, "SHUTDOWN_GRACE_SECONDS": "5"}
    user_id = user()
    async with (
        genservice_process(env) as service,
        grpc.aio.insecure_channel(service.addr) as channel,
        await psycopg.AsyncConnection.connect(database_url, autocommit=True) as barrier,
    ):
        stub = pb_grpc.GenerationServiceStub(channel)
        conversation_id = await new_conversation(stub, user_id)
        content = "just in time [[len=200 chunk=5 delay=0.005]]"
        async with barrier.transaction():
            await barrier.execute("SELECT 1 FROM conversations WHERE id = %s FOR UPDATE", (conversation_id,))
            call = stub.StreamReply(
                pb.StreamReplyRequest(user_id=user_id, conversation_id=conversation_id, content=content)
            )
            await waiting_for_a_lock(barrier, "genservice", 1)
            service.signal(signal.SIGTERM)
            health = health_pb2_grpc.HealthStub(channel)
            async with asyncio.timeout(10):
                while (
                    await health.Check(health_pb2.HealthCheckRequest())
                ).status == health_pb2.HealthCheckResponse.SERVING:
                    await asyncio.sleep(0.05)
        events = await collect(call)
        assert await service.wait() == 0

    final = events[-1].finished.message
    assert final.status == pb.MESSAGE_STATUS_COMPLETE and final.content == expected_reply(content)
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT count(*) AS n FROM messages WHERE conversation_id = %s AND status = 'streaming'", (conversation_id,)
        )
        row = await cursor.fetchone()
    assert row is not None and row["n"] == 0


async def test_the_saved_text_is_one_plain_query_away_while_streaming_and_after(
    stub, pool: Pool, model_server: ModelServer
) -> None:
    user_id = user()
    with model_server.gate() as gate:
        content = f"read me from SQL [[len=2000 {gate.at(700)}]]"
        call = stub.StreamReply(pb.StreamReplyRequest(user_id=user_id, content=content))
        started, received = await read_to_the_gate(call, 700, stub, user_id)
        expected = expected_reply(content)
        # saved within SAVE_MAX_DELAY of reaching genservice, while the model is held
        partial = await message_text(pool, started.message_id, until=lambda _, text: len(text) == len(received))
        gate.release()
        final = await message_text(pool, started.message_id, until=lambda status, _: status != "streaming")
    call.cancel()
    assert partial == ("streaming", expected[:700])
    assert final == ("complete", expected)


async def message_text(pool: Pool, message_id: str, until: Callable[[str, str], bool]) -> tuple[str, str]:
    """The message as the message_text view shows it, (status, content), polled until `until` holds."""
    async with asyncio.timeout(15):
        while True:
            async with pool.connection() as conn:
                cursor = await conn.execute("SELECT status, content FROM message_text WHERE id = %s", (message_id,))
                row = await cursor.fetchone()
            assert row is not None
            if until(row["status"], row["content"]):
                return row["status"], row["content"]
            await asyncio.sleep(0.05)
