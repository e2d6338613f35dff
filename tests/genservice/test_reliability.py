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
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from genservice.replies.database import DATABASE_ERRORS, Pool
from genservice.server import running_service, session_options
from genservice.v1 import genservice_pb2 as pb
from genservice.v1 import genservice_pb2_grpc as pb_grpc
from tests.support.grpc_replies import collect, joined, read_started, read_text, read_to_the_gate
from tests.support.model_server import ModelServer, expected_reply
from tests.support.processes import genservice_process, reply_on_a_genservice_process


def user() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


async def test_a_killed_generation_is_ended_error_with_its_saved_text(stub, database_url, model_server):
    env = {"DATABASE_URL": database_url, "OPENAI_BASE_URL": model_server.base_url, "LEASE_SECONDS": "1"}
    with model_server.gate() as gate:
        user_id, content = user(), f"die [[len=8000 {gate.at(600)}]]"
        request = pb.StreamReplyRequest(user_id=user_id, content=content)
        async with reply_on_a_genservice_process(env, request) as (doomed, call):
            started, received = await read_to_the_gate(call, 600, stub, user_id)
            # the in-process service follows it from Postgres: once it has the 600 characters, they are saved
            watch = stub.WatchReply(pb.WatchReplyRequest(user_id=user_id, message_id=started.message_id))
            await read_started(watch)
            saved = await read_text(watch, 600)
            doomed.signal(signal.SIGKILL)
            await doomed.wait()

            # its sweeper notices the expired lease; the watcher gets `finished`
            rest = await collect(watch, seconds=10)

    final = rest[-1].finished.message
    assert final.status == pb.MESSAGE_STATUS_ERROR
    assert "interrupted" in final.error
    # every saved character is kept
    assert final.content == saved + joined(rest) == received == expected_reply(content)[:600]


async def test_sigterm_drains_finishes_what_it_can_and_ends_the_rest_error(database_url, model_server):
    env = {
        "DATABASE_URL": database_url,
        "OPENAI_BASE_URL": model_server.base_url,
        "SHUTDOWN_GRACE_SECONDS": "3",
    }
    with model_server.gate() as short_gate, model_server.gate() as long_gate:
        short, long = f"short [[len=300 {short_gate.at(10)}]]", f"long [[len=20000 {long_gate.at(100)}]]"
        async with genservice_process(env) as service, grpc.aio.insecure_channel(service.addr) as channel:
            remote = pb_grpc.GenerationServiceStub(channel)
            short_user, long_user = user(), user()
            short_call = remote.StreamReply(pb.StreamReplyRequest(user_id=short_user, content=short))
            long_call = remote.StreamReply(pb.StreamReplyRequest(user_id=long_user, content=long))
            for call, user_id, chars in ((short_call, short_user, 10), (long_call, long_user, 100)):
                await read_to_the_gate(call, chars, remote, user_id)
            service.signal(signal.SIGTERM)

            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await collect(remote.StreamReply(pb.StreamReplyRequest(user_id=user(), content="too late")))
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            # the short reply can end within the grace period; the long one stays held past it
            short_gate.release()

            short_end = (await collect(short_call))[-1].finished.message
            long_end = (await collect(long_call))[-1].finished.message
            assert await service.wait() == 0

    assert short_end.status == pb.MESSAGE_STATUS_COMPLETE
    assert short_end.content == expected_reply(short)
    assert long_end.status == pb.MESSAGE_STATUS_ERROR
    assert "shut down" in long_end.error
    # ended with every character it had
    assert long_end.content == expected_reply(long)[:100]


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
    env = {"DATABASE_URL": fresh_database, "OPENAI_BASE_URL": model_server.base_url}
    with model_server.gate() as gate:
        # paced after the gate: a caller that falls behind a burst goes on from Postgres, which refuses it here
        user_id, content = user(), f"outage [[len=4000 chunk=5 delay=0.01 {gate.at(300)}]]"
        async with genservice_process(env) as service, grpc.aio.insecure_channel(service.addr) as channel:
            remote = pb_grpc.GenerationServiceStub(channel)
            call = remote.StreamReply(pb.StreamReplyRequest(user_id=user_id, content=content))
            started, received = await read_to_the_gate(call, 300, remote, user_id)

            await set_connections_allowed(database_url, dbname, False)
            try:
                # the model goes on while nothing can be saved, and live callers keep getting its text
                gate.release()
                received += await read_text(call, 1500 - len(received))
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


async def test_a_model_that_accepts_and_never_answers_ends_error_in_time(genservice_config):
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    silent = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    config = dataclasses.replace(
        genservice_config, openai_base_url=f"http://127.0.0.1:{port}/v1", model_max_retries=0, model_idle_timeout=0.5
    )
    try:
        async with running_service(config) as service, grpc.aio.insecure_channel(service.target) as channel:
            events = await collect(
                pb_grpc.GenerationServiceStub(channel).StreamReply(pb.StreamReplyRequest(user_id=user(), content="hi"))
            )
    finally:
        for writer in held:
            writer.close()
        silent.close()
        await silent.wait_closed()
    final = events[-1].finished.message
    assert final.status == pb.MESSAGE_STATUS_ERROR
    assert final.error == "the model did not answer in time"


async def test_a_session_idle_in_a_transaction_is_ended_after_the_bound(database_url: str, pool: Pool) -> None:
    """genservice's connections carry idle_in_transaction_session_timeout and keep the URL's own options; what the
    ended session then raises counts as a database outage (retried), not as a bug."""
    url = make_conninfo(database_url, options="-c lock_timeout=4321")
    async with await psycopg.AsyncConnection.connect(url, options=session_options(url, 0.3)["options"]) as idle:
        cursor = await idle.execute(
            "SELECT current_setting('lock_timeout'), current_setting('idle_in_transaction_session_timeout'),"
            " pg_backend_pid()"
        )
        row = await cursor.fetchone()
        assert row is not None and row[:2] == ("4321ms", "300ms")
        # the connection is inside a transaction now, and says nothing more
        async with asyncio.timeout(10):
            while await backend_alive(pool, row[2]):
                await asyncio.sleep(0.05)
        with pytest.raises(DATABASE_ERRORS):
            await idle.execute("SELECT 1")


async def backend_alive(pool: Pool, pid: int) -> bool:
    async with pool.connection() as conn:
        cursor = await conn.execute("SELECT count(*) AS n FROM pg_stat_activity WHERE pid = %s", (pid,))
        row = await cursor.fetchone()
    return row is not None and row["n"] > 0


async def test_a_paused_owner_that_lost_its_lease_never_writes_to_the_message_again(stub, database_url, model_server):
    env = {"DATABASE_URL": database_url, "OPENAI_BASE_URL": model_server.base_url, "LEASE_SECONDS": "1"}
    with model_server.gate() as gate:
        user_id, content = user(), f"pause [[len=6000 {gate.at(300)}]]"
        request = pb.StreamReplyRequest(user_id=user_id, content=content)
        async with reply_on_a_genservice_process(env, request) as (paused, call):
            started, _ = await read_to_the_gate(call, 300, stub, user_id)
            watch = stub.WatchReply(pb.WatchReplyRequest(user_id=user_id, message_id=started.message_id))
            # a pause inside one of the owner's transactions holds its row lock for one of its leases at most
            paused.signal(signal.SIGSTOP)
            swept = (await collect(watch, seconds=10))[-1].finished.message
            # the model goes on, so the owner wakes up with text it must not write
            gate.release()
            paused.signal(signal.SIGCONT)
            # back from its pause, the owner finds its lease gone: its caller is told the truth from Postgres
            told = (await collect(call, seconds=10))[-1].finished.message
        after = await stub.GetMessage(pb.GetMessageRequest(user_id=user_id, message_id=started.message_id))

    assert swept.status == pb.MESSAGE_STATUS_ERROR and "interrupted" in swept.error
    assert told.status == swept.status and told.content == swept.content
    assert after.status == swept.status and after.content == swept.content
    assert after.updated_at == swept.updated_at
