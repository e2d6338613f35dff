"""Faults done for real: kill -9, SIGTERM, Postgres refusing connections, a misbehaving model."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import uuid

import grpc
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from genservice.server import running_service
from genservice.v1 import genservice_pb2 as pb
from genservice.v1 import genservice_pb2_grpc as pb_grpc
from tests.support.grpc_replies import collect, joined
from tests.support.model_server import ModelServer, expected_reply
from tests.support.processes import genservice_process


def user() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


async def read_chars(call, at_least: int) -> tuple[pb.ReplyStarted, str]:
    started = (await call.read()).started
    received = ""
    async with asyncio.timeout(10):
        while len(received) < at_least:
            received += (await call.read()).delta.text
    return started, received


async def test_a_killed_generation_is_ended_error_with_its_saved_text(stub, database_url, model_server):
    user_id, content = user(), "die [[len=8000 chunk=5 delay=0.01]]"
    env = {"DATABASE_URL": database_url, "OPENAI_BASE_URL": model_server.base_url, "LEASE_SECONDS": "1"}
    async with genservice_process(env) as doomed, grpc.aio.insecure_channel(doomed.addr) as channel:
        call = pb_grpc.GenerationServiceStub(channel).StreamReply(
            pb.StreamReplyRequest(user_id=user_id, content=content)
        )
        started, received = await read_chars(call, 600)
        watch = stub.WatchReply(pb.WatchReplyRequest(user_id=user_id, message_id=started.message_id))
        doomed.signal(signal.SIGKILL)
        await doomed.wait()

        # the in-process service's sweeper notices the expired lease; the watcher gets `finished`
        watched = await collect(watch, seconds=10)

    final = watched[-1].finished.message
    assert final.status == pb.MESSAGE_STATUS_ERROR
    assert "interrupted" in final.error
    assert joined(watched) == final.content
    # every saved character is kept: at most one save (200 characters) behind what the caller saw
    assert expected_reply(content).startswith(final.content)
    assert len(final.content) >= len(received) - 200


async def test_sigterm_drains_finishes_what_it_can_and_ends_the_rest_error(database_url, model_server):
    env = {
        "DATABASE_URL": database_url,
        "OPENAI_BASE_URL": model_server.base_url,
        "SHUTDOWN_GRACE_SECONDS": "1.5",
    }
    short, long = "short [[len=300 chunk=5 delay=0.01]]", "long [[len=20000 chunk=5 delay=0.01]]"
    async with genservice_process(env) as service, grpc.aio.insecure_channel(service.addr) as channel:
        remote = pb_grpc.GenerationServiceStub(channel)
        short_call = remote.StreamReply(pb.StreamReplyRequest(user_id=user(), content=short))
        long_call = remote.StreamReply(pb.StreamReplyRequest(user_id=user(), content=long))
        await read_chars(short_call, 10)
        await read_chars(long_call, 10)
        service.signal(signal.SIGTERM)

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await collect(remote.StreamReply(pb.StreamReplyRequest(user_id=user(), content="too late")))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

        short_end = (await collect(short_call))[-1].finished.message
        long_end = (await collect(long_call))[-1].finished.message
        assert await service.wait() == 0

    assert short_end.status == pb.MESSAGE_STATUS_COMPLETE
    assert short_end.content == expected_reply(short)
    assert long_end.status == pb.MESSAGE_STATUS_ERROR
    assert "shut down" in long_end.error
    assert expected_reply(long).startswith(long_end.content) and len(long_end.content) > 10


async def set_connections_allowed(database_url: str, dbname: str, allowed: bool) -> None:
    admin_url = database_url if conninfo_to_dict(database_url).get("dbname") != dbname else None
    assert admin_url is not None
    async with await psycopg.AsyncConnection.connect(admin_url, autocommit=True) as admin:
        await admin.execute(
            sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
                sql.Identifier(dbname), sql.SQL("true" if allowed else "false")
            )
        )
        if not allowed:
            await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (dbname,))


async def test_a_reply_survives_postgres_refusing_connections_for_a_while(database_url, fresh_database, model_server):
    dbname = str(conninfo_to_dict(fresh_database)["dbname"])
    user_id, content = user(), "outage [[len=4000 chunk=5 delay=0.01]]"
    env = {"DATABASE_URL": fresh_database, "OPENAI_BASE_URL": model_server.base_url}
    async with genservice_process(env) as service, grpc.aio.insecure_channel(service.addr) as channel:
        remote = pb_grpc.GenerationServiceStub(channel)
        call = remote.StreamReply(pb.StreamReplyRequest(user_id=user_id, content=content))
        started, received = await read_chars(call, 300)

        await set_connections_allowed(database_url, dbname, False)
        try:
            # live callers keep getting text while nothing can be saved
            async with asyncio.timeout(10):
                while len(received) < 1500:
                    received += (await call.read()).delta.text
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await collect(remote.StreamReply(pb.StreamReplyRequest(user_id=user(), content="new")))
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            await set_connections_allowed(database_url, dbname, True)

        rest = await collect(call, seconds=20)
        saved = await remote.GetMessage(pb.GetMessageRequest(user_id=user_id, message_id=started.message_id))

    assert received + joined(rest) == expected_reply(content)
    assert saved.status == pb.MESSAGE_STATUS_COMPLETE
    assert saved.content == expected_reply(content)


@pytest.fixture
async def strict_stub(genservice_config, model_server: ModelServer):
    config = dataclasses.replace(genservice_config, model_idle_timeout=0.5, max_reply_chars=1000, model_max_retries=2)
    async with running_service(config) as service, grpc.aio.insecure_channel(service.target) as channel:
        yield pb_grpc.GenerationServiceStub(channel)


@pytest.mark.parametrize(
    ("directive", "status", "kept", "error_has"),
    [
        ("[[len=300 flaky=2 status=503]]", pb.MESSAGE_STATUS_COMPLETE, 300, ""),
        ("[[len=300 flaky=1 status=429]]", pb.MESSAGE_STATUS_COMPLETE, 300, ""),
        ("[[status=500]]", pb.MESSAGE_STATUS_ERROR, 0, "500"),
        ("[[status=429]]", pb.MESSAGE_STATUS_ERROR, 0, "429"),
        ("[[len=900 stall_after=400 stall=3]]", pb.MESSAGE_STATUS_ERROR, 400, "stalled"),
        ("[[len=3000]]", pb.MESSAGE_STATUS_ERROR, 1000, "limit"),
        ("[[len=600 nul_at=333]]", pb.MESSAGE_STATUS_ERROR, 333, "cannot be stored"),
    ],
)
async def test_a_misbehaving_model_ends_in_a_clear_status_with_every_character_kept(
    strict_stub, directive, status, kept, error_has
):
    user_id, content = user(), f"misbehave {uuid.uuid4().hex[:6]} {directive}"
    events = await collect(strict_stub.StreamReply(pb.StreamReplyRequest(user_id=user_id, content=content)))
    final = events[-1].finished.message
    assert final.status == status
    assert final.content == expected_reply(content)[:kept]
    assert error_has in final.error
    saved = await strict_stub.GetMessage(pb.GetMessageRequest(user_id=user_id, message_id=final.id))
    assert saved.content == final.content and saved.status == status


async def test_an_unreachable_model_ends_error_with_a_reason(genservice_config):
    config = dataclasses.replace(genservice_config, openai_base_url="http://127.0.0.1:9/v1", model_max_retries=0)
    async with running_service(config) as service, grpc.aio.insecure_channel(service.target) as channel:
        events = await collect(
            pb_grpc.GenerationServiceStub(channel).StreamReply(pb.StreamReplyRequest(user_id=user(), content="hi"))
        )
    final = events[-1].finished.message
    assert final.status == pb.MESSAGE_STATUS_ERROR
    assert "could not reach the model" in final.error


async def test_a_paused_owner_that_lost_its_lease_never_writes_to_the_message_again(stub, database_url, model_server):
    user_id, content = user(), "pause [[len=6000 chunk=5 delay=0.005]]"
    env = {"DATABASE_URL": database_url, "OPENAI_BASE_URL": model_server.base_url, "LEASE_SECONDS": "1"}
    async with genservice_process(env) as paused:
        async with grpc.aio.insecure_channel(paused.addr) as channel:
            call = pb_grpc.GenerationServiceStub(channel).StreamReply(
                pb.StreamReplyRequest(user_id=user_id, content=content)
            )
            started, _ = await read_chars(call, 300)
            watch = stub.WatchReply(pb.WatchReplyRequest(user_id=user_id, message_id=started.message_id))
            paused.signal(signal.SIGSTOP)
            swept = (await collect(watch, seconds=10))[-1].finished.message
            paused.signal(signal.SIGCONT)
            # back from its pause, the owner finds its lease gone: its caller is told the truth from Postgres
            told = (await collect(call, seconds=10))[-1].finished.message
        after = await stub.GetMessage(pb.GetMessageRequest(user_id=user_id, message_id=started.message_id))

    assert swept.status == pb.MESSAGE_STATUS_ERROR and "interrupted" in swept.error
    assert told.status == swept.status and told.content == swept.content
    assert after.status == swept.status and after.content == swept.content
    assert after.updated_at == swept.updated_at
