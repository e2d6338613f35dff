"""Nothing ends without ending its message: a model that sends what the client does not expect, orphans, dead tasks."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from genservice.config import GenServiceConfig
from genservice.server import running_service
from genservice.v1 import genservice_pb2 as pb
from genservice.v1 import genservice_pb2_grpc as pb_grpc
from tests.support.grpc_replies import collect, joined
from tests.support.model_server import ModelServer
from tests.support.odd_model import GOOD_TEXT, odd_model


def user() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize("bad", ["not-json", "odd-shape"])
async def test_an_unexpected_chunk_ends_the_reply_error_with_every_character_before_it(genservice_config, bad):
    async with odd_model(bad) as base_url:
        config = dataclasses.replace(genservice_config, openai_base_url=base_url)
        async with running_service(config) as service, grpc.aio.insecure_channel(service.target) as channel:
            stub = pb_grpc.GenerationServiceStub(channel)
            user_id = user()
            events = await collect(stub.StreamReply(pb.StreamReplyRequest(user_id=user_id, content="hi")))
            final = events[-1].finished.message
            saved = await stub.GetMessage(pb.GetMessageRequest(user_id=user_id, message_id=final.id))

    assert final.status == pb.MESSAGE_STATUS_ERROR
    assert final.error and "Traceback" not in final.error
    assert final.content == GOOD_TEXT == joined(events)
    assert saved.status == pb.MESSAGE_STATUS_ERROR and saved.content == GOOD_TEXT


async def insert_orphan(conn: psycopg.AsyncConnection, owner: str) -> str:
    """A streaming message leased to `owner` with two saves, as a generation task that died would leave it."""
    conversation_id, message_id = str(uuid.uuid4()), str(uuid.uuid4())
    await conn.execute(
        "INSERT INTO conversations (id, user_id, title) VALUES (%s, 'orphans', 'orphan')", (conversation_id,)
    )
    await conn.execute(
        "INSERT INTO messages (id, conversation_id, user_id, role, status, saved_length, lease_owner,"
        " lease_expires_at) VALUES (%s, %s, 'orphans', 'assistant', 'streaming', 10, %s, clock_timestamp())",
        (message_id, conversation_id, owner),
    )
    await conn.execute(
        "INSERT INTO message_saves (message_id, start_offset, text) VALUES (%s, 0, 'saved '), (%s, 6, 'text')",
        (message_id, message_id),
    )
    return message_id


async def test_a_process_sweeps_its_own_orphans(genservice_config, fresh_database):
    config = dataclasses.replace(genservice_config, database_url=fresh_database, lease_seconds=0.6)
    async with (
        running_service(config) as service,
        await psycopg.AsyncConnection.connect(fresh_database, autocommit=True) as conn,
    ):
        orphan = await insert_orphan(conn, service.owner)
        async with asyncio.timeout(10):
            while True:
                row = await (
                    await conn.execute("SELECT status, content, error FROM messages WHERE id = %s", (orphan,))
                ).fetchone()
                assert row is not None
                if row[0] != "streaming":
                    break
                await asyncio.sleep(0.1)

    assert row[0] == "error" and row[1] == "saved text" and "interrupted" in row[2]


async def health(target: str) -> int:
    async with grpc.aio.insecure_channel(target) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
    return int(reply.status)


async def test_health_turns_not_serving_when_a_background_task_keeps_failing(
    genservice_config, fresh_database, model_server: ModelServer
):
    config: GenServiceConfig = dataclasses.replace(genservice_config, database_url=fresh_database)
    async with (
        running_service(config) as service,
        await psycopg.AsyncConnection.connect(fresh_database, autocommit=True) as conn,
        grpc.aio.insecure_channel(service.target) as channel,
    ):
        assert await health(service.target) == health_pb2.HealthCheckResponse.SERVING
        # every save of the batcher now fails with an error that is not an outage
        await conn.execute("ALTER TABLE message_saves RENAME TO message_saves_gone")
        stub = pb_grpc.GenerationServiceStub(channel)
        with model_server.gate() as gate:
            # held with text the batcher cannot save, and resends after each failure
            request = pb.StreamReplyRequest(user_id=user(), content=f"held [[len=5000 {gate.at(300)}]]")
            call = stub.StreamReply(request)
            await gate.reached()
            async with asyncio.timeout(20):
                while await health(service.target) == health_pb2.HealthCheckResponse.SERVING:
                    await asyncio.sleep(0.2)
            call.cancel()
            await conn.execute("ALTER TABLE message_saves_gone RENAME TO message_saves")
