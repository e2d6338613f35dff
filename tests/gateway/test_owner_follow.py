"""A follower on any gateway gets the text from the reply's owner as it is written; Postgres when the owner is gone."""

from __future__ import annotations

import asyncio
import random
import signal
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import grpc
import httpx2
import pytest

from gateway.auth import DEV_USER
from gateway.server import RunningGateway
from genservice.replies.database import Pool
from genservice.v1 import genservice_pb2 as pb
from genservice.v1 import genservice_pb2_grpc as pb_grpc
from tests.support import grpc_replies
from tests.support.gateway_harness import (
    Event,
    assert_streaming,
    content,
    gateway_config,
    http_client,
    joined,
    metric,
    read_rest,
    read_started,
    read_text,
    reply_text,
    started_gateway,
    stream_events,
    until,
)
from tests.support.model_server import ModelServer
from tests.support.processes import Process, genservice_process

HELD_AT = 300
# the session's genservice ends a dead or paused owner's message soon after its lease runs out
SHORT_LEASE = {"LEASE_SECONDS": "1"}


async def saved_text(pool: Pool, message_id: str) -> str:
    """What any program reading Postgres sees of the message now."""
    async with pool.connection() as conn:
        cursor = await conn.execute("SELECT content FROM message_text WHERE id = %s", (message_id,))
        row = await cursor.fetchone()
    assert row is not None
    return str(row["content"])


async def until_saved(pool: Pool, message_id: str, chars: int) -> None:
    async def saved() -> bool:
        return len(await saved_text(pool, message_id)) == chars

    await until(saved)


async def rest_after_the_owner_dies(
    owner: Process, pool: Pool, message_id: str, events: AsyncGenerator[Event, None]
) -> list[Event]:
    """Kill the owner once what was read (HELD_AT characters) is saved; the rest of the stream then."""
    await until_saved(pool, message_id, HELD_AT)
    owner.signal(signal.SIGKILL)
    await owner.wait()
    return await read_rest(events)


def saved_error_text(events: list[Event]) -> str:
    """The text of the `finished` that ends `events`, which must say ERROR."""
    finished = events[-1]
    assert finished.event == "finished"
    assert finished.json()["message"]["status"] == "error"
    return str(finished.json()["message"]["content"])


@asynccontextmanager
async def owner_and_gateway(
    database_url: str,
    model_server: ModelServer,
    genservice_target: str,
    env: Mapping[str, str],
    owner_start_seconds: float = 30.0,
) -> AsyncIterator[tuple[Process, RunningGateway]]:
    """A genservice process of its own, and a gateway configured with it beside the session's genservice.

    By default, however slow this machine, the owner is not passed over for being slow to start a stream."""
    process_env = {"DATABASE_URL": database_url, "OPENAI_BASE_URL": model_server.base_url, **env}
    async with genservice_process(process_env) as owner:
        config = gateway_config(
            database_url, f"{genservice_target},{owner.addr}", owner_start_seconds=owner_start_seconds
        )
        async with started_gateway(config) as gateway:
            yield owner, gateway


@asynccontextmanager
async def reply_on(owner: Process, message: str) -> AsyncIterator[tuple[Any, str]]:
    """A reply started on `owner` for the gateway's development user: its open call and its message id."""
    async with grpc.aio.insecure_channel(owner.addr) as channel:
        call = pb_grpc.GenerationServiceStub(channel).StreamReply(
            pb.StreamReplyRequest(user_id=DEV_USER, content=message)
        )
        started = await grpc_replies.read_started(call)
        yield call, started.message_id
        call.cancel()


async def test_a_follower_elsewhere_gets_the_text_before_any_save(
    database_url: str, pool: Pool, model_server: ModelServer, genservice_target: str
) -> None:
    # nothing is saved until the reply ends: what the follower gets can only come from the owner's memory
    never = {"SAVE_MAX_DELAY_MS": "600000", "SAVE_EVERY_CHARS": "10000000", "LEASE_SECONDS": "120"}
    async with owner_and_gateway(database_url, model_server, genservice_target, never) as (owner, gateway):
        with model_server.gate() as gate:
            message = content("from memory", f"[[len=1500 {gate.at(HELD_AT)}]]")
            async with reply_on(owner, message) as (_, message_id), http_client(gateway) as client:
                async with client.stream("GET", f"/v1/messages/{message_id}/events") as response:
                    events = stream_events(response)
                    await read_started(events)
                    got = await read_text(events, HELD_AT)
                    assert joined(got, start=0) == reply_text(message)[:HELD_AT]
                    assert await saved_text(pool, message_id) == ""
                    assert (await client.get(f"/v1/messages/{message_id}")).json()["status"] == "streaming"
                    # not through Postgres: the gateway listens for nothing
                    assert await metric(client, "gateway_listener_subscriptions") == 0
                    gate.release()
                    got += await read_rest(events)
                assert await metric(client, 'gateway_owner_follows_total{outcome="finished"}') == 1
    assert got[-1].event == "finished"
    assert joined(got, start=0) == reply_text(message) == got[-1].json()["message"]["content"]


async def test_a_follower_whose_owner_dies_continues_from_postgres(
    database_url: str, pool: Pool, model_server: ModelServer, genservice_target: str
) -> None:
    async with owner_and_gateway(database_url, model_server, genservice_target, SHORT_LEASE) as (owner, gateway):
        with model_server.gate() as gate:
            message = content("owner dies", f"[[len=1500 {gate.at(HELD_AT)}]]")
            async with reply_on(owner, message) as (_, message_id), http_client(gateway) as client:
                async with client.stream("GET", f"/v1/messages/{message_id}/events") as response:
                    events = stream_events(response)
                    await read_started(events)
                    got = await read_text(events, HELD_AT)
                    assert await metric(client, "gateway_listener_subscriptions") == 0

                    got += await rest_after_the_owner_dies(owner, pool, message_id, events)
                assert await metric(client, 'gateway_owner_follows_total{outcome="failed_midway"}') == 1
    # every character once, and exactly what was saved
    assert joined(got, start=0) == saved_error_text(got) == reply_text(message)[:HELD_AT]


async def test_an_owner_that_does_not_answer_in_time_is_passed_over_for_postgres(
    database_url: str, pool: Pool, model_server: ModelServer, genservice_target: str
) -> None:
    started = owner_and_gateway(database_url, model_server, genservice_target, SHORT_LEASE, 0.5)
    async with started as (owner, gateway):
        with model_server.gate() as gate:
            message = content("owner paused", f"[[len=1500 {gate.at(HELD_AT)}]]")
            async with reply_on(owner, message) as (_, message_id), http_client(gateway) as client:
                await until_saved(pool, message_id, HELD_AT)
                # paused: it accepts the connection and never answers; its lease runs out meanwhile
                owner.signal(signal.SIGSTOP)
                async with client.stream("GET", f"/v1/messages/{message_id}/events") as response:
                    events = stream_events(response)
                    await read_started(events)
                    got = await read_rest(events)
                assert await metric(client, 'gateway_owner_follows_total{outcome="not_started"}') == 1
    assert joined(got, start=0) == saved_error_text(got) == reply_text(message)[:HELD_AT]


async def test_a_follower_of_an_owner_slow_to_start_reads_postgres_meanwhile_then_moves_to_the_owner(
    database_url: str, pool: Pool, model_server: ModelServer, genservice_target: str
) -> None:
    started = owner_and_gateway(database_url, model_server, genservice_target, NEVER_SAVED, 0.5)
    async with started as (owner, gateway), http_client(gateway) as client:
        with model_server.gate() as first_gate, model_server.gate() as gate:
            first = content("owner busy", f"[[len=100 {first_gate.at(10)}]]")
            message = content("owner slow", f"[[len=1500 {gate.at(HELD_AT)}]]")
            async with reply_on(owner, first) as (_, first_id), following(client, first_id, 0):
                # the gateway's connection to the owner is up; paused, the owner takes new calls and never answers
                async with reply_on(owner, message) as (_, message_id):
                    owner.signal(signal.SIGSTOP)
                    async with client.stream("GET", f"/v1/messages/{message_id}/events") as response:
                        events = stream_events(response)
                        # from Postgres after the start bound; no text, since none is saved
                        await read_started(events)
                        assert await metric(client, 'gateway_owner_follows_total{outcome="slow_start"}') == 1
                        owner.signal(signal.SIGCONT)
                        # text that Postgres does not have: the follow moved to the owner once it answered
                        got = await read_text(events, HELD_AT)
                        assert await saved_text(pool, message_id) == ""
                        gate.release()
                        got += await read_rest(events)
                    assert await metric(client, 'gateway_owner_follows_total{outcome="finished"}') == 1
                first_gate.release()
    assert got[-1].event == "finished"
    assert joined(got, start=0) == reply_text(message) == got[-1].json()["message"]["content"]


async def test_an_owner_address_that_is_not_configured_is_never_dialled(
    gateway: RunningGateway,
    client: httpx2.AsyncClient,
    stub: pb_grpc.GenerationServiceStub,
    pool: Pool,
    model_server: ModelServer,
) -> None:
    dialled = 0

    def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal dialled
        dialled += 1
        writer.close()

    stranger = await asyncio.start_server(count, "127.0.0.1", 0)
    host, port = stranger.sockets[0].getsockname()[:2]
    async with stranger:
        with model_server.gate() as gate:
            message = content("stranger", f"[[len=1500 {gate.at(HELD_AT)}]]")
            call = stub.StreamReply(pb.StreamReplyRequest(user_id=DEV_USER, content=message))
            message_id = (await grpc_replies.read_started(call)).message_id
            async with pool.connection() as conn:
                await conn.execute("UPDATE messages SET owner_addr = %s WHERE id = %s", (f"{host}:{port}", message_id))
            async with client.stream("GET", f"/v1/messages/{message_id}/events") as response:
                events = stream_events(response)
                await read_started(events)
                got = await read_text(events, HELD_AT)
                # through Postgres LISTEN instead
                assert await metric(client, "gateway_listener_subscriptions") == 1
                gate.release()
                got += await read_rest(events)
            call.cancel()
    assert dialled == 0
    assert joined(got, start=0) == reply_text(message) == got[-1].json()["message"]["content"]


# nothing is saved until the reply ends: what followers get before it can only come from the owner's memory
NEVER_SAVED = {"SAVE_MAX_DELAY_MS": "600000", "SAVE_EVERY_CHARS": "10000000", "LEASE_SECONDS": "120"}


@asynccontextmanager
async def following(
    client: httpx2.AsyncClient, message_id: str, offset: int
) -> AsyncIterator[AsyncGenerator[Event, None]]:
    """A follower of the message from `offset`, past its `started`."""
    url = f"/v1/messages/{message_id}/events"
    async with client.stream("GET", url, headers={"Last-Event-ID": str(offset)}) as response:
        events = stream_events(response)
        await read_started(events)
        yield events


async def test_followers_on_one_gateway_share_one_stream_on_the_owner(
    database_url: str, pool: Pool, model_server: ModelServer, genservice_target: str
) -> None:
    # the first from the start; the others join once 300 characters are out, from the start and from anywhere
    offsets = [0, 0, *random.sample(range(1, HELD_AT), 4)]
    async with owner_and_gateway(database_url, model_server, genservice_target, NEVER_SAVED) as (owner, gateway):
        with model_server.gate() as gate:
            message = content("shared", f"[[len=1500 {gate.at(HELD_AT)}]]")
            text = reply_text(message)
            async with reply_on(owner, message) as (_, message_id), http_client(gateway) as client:
                async with AsyncExitStack() as stack:
                    got: list[tuple[int, AsyncGenerator[Event, None], list[Event]]] = []
                    for offset in offsets:
                        events = await stack.enter_async_context(following(client, message_id, offset))
                        backlog = await read_text(events, HELD_AT - offset, start=offset)
                        assert joined(backlog, start=offset) == text[offset:HELD_AT]
                        got.append((offset, events, backlog))
                    assert await metric(client, "gateway_owner_streams") == 1
                    assert await metric(client, "gateway_listener_subscriptions") == 0
                    gate.release()
                    for offset, events, backlog in got:
                        backlog += await read_rest(events)
                        assert backlog[-1].event == "finished"
                        assert joined(backlog, start=offset) == text[offset:]
                        assert backlog[-1].json()["message"]["content"] == text
                assert await metric(client, 'gateway_owner_follows_total{outcome="finished"}') == len(offsets)
                assert await metric(client, "gateway_owner_streams") == 0


async def test_the_shared_stream_closes_when_its_last_follower_leaves(
    database_url: str, pool: Pool, model_server: ModelServer, genservice_target: str
) -> None:
    async with owner_and_gateway(database_url, model_server, genservice_target, NEVER_SAVED) as (owner, gateway):
        with model_server.gate() as gate:
            message = content("last leaves", f"[[len=1500 {gate.at(HELD_AT)}]]")
            text = reply_text(message)
            async with reply_on(owner, message) as (_, message_id), http_client(gateway) as client:

                async def owner_streams(count: int) -> None:
                    async def open_now() -> bool:
                        return await metric(client, "gateway_owner_streams") == count

                    await until(open_now)

                async with following(client, message_id, 0) as first:
                    await read_text(first, HELD_AT)
                    async with following(client, message_id, 0) as second:
                        await read_text(second, HELD_AT)
                    # the second left; the stream stays for the first
                    await owner_streams(1)
                    await assert_streaming(client, message_id)
                await owner_streams(0)
                # a follower after that opens a new one, from the start
                async with following(client, message_id, 0) as third:
                    got = await read_text(third, HELD_AT)
                    await owner_streams(1)
                    gate.release()
                    got += await read_rest(third)
                await owner_streams(0)
    assert joined(got, start=0) == text == got[-1].json()["message"]["content"]


async def test_every_follower_of_a_shared_stream_continues_from_postgres_when_the_owner_dies(
    database_url: str, pool: Pool, model_server: ModelServer, genservice_target: str
) -> None:
    offsets = [0, *random.sample(range(1, HELD_AT), 2)]
    async with owner_and_gateway(database_url, model_server, genservice_target, SHORT_LEASE) as (owner, gateway):
        with model_server.gate() as gate:
            message = content("shared owner dies", f"[[len=1500 {gate.at(HELD_AT)}]]")
            async with reply_on(owner, message) as (_, message_id), http_client(gateway) as client:
                async with AsyncExitStack() as stack:
                    got: list[tuple[int, AsyncGenerator[Event, None], list[Event]]] = []
                    for offset in offsets:
                        events = await stack.enter_async_context(following(client, message_id, offset))
                        got.append((offset, events, await read_text(events, HELD_AT - offset, start=offset)))
                    assert await metric(client, "gateway_owner_streams") == 1

                    await until_saved(pool, message_id, HELD_AT)
                    owner.signal(signal.SIGKILL)
                    await owner.wait()
                    for offset, events, backlog in got:
                        backlog += await read_rest(events)
                        saved = saved_error_text(backlog)
                        assert saved == reply_text(message)[:HELD_AT]
                        assert joined(backlog, start=offset) == saved[offset:]
                assert await metric(client, 'gateway_owner_follows_total{outcome="failed_midway"}') == len(offsets)
                assert await metric(client, "gateway_owner_streams") == 0


@pytest.mark.parametrize("configured", [True, False])
async def test_the_origin_follows_its_reply_on_the_owner_stream_where_it_can(
    database_url: str, model_server: ModelServer, genservice_target: str, configured: bool
) -> None:
    # the same genservice, named otherwise than it names itself: its address is not one to dial
    target = genservice_target if configured else genservice_target.replace("127.0.0.1", "localhost")
    async with started_gateway(gateway_config(database_url, target)) as gateway, http_client(gateway) as client:
        with model_server.gate() as gate:
            message = content("origin", f"[[len=1200 {gate.at(HELD_AT)}]]")
            async with client.stream("POST", "/v1/replies", json={"content": message}) as response:
                events = stream_events(response)
                await read_started(events)
                got = await read_text(events, HELD_AT)
                # one watch on the owner's shared stream, or the StreamReply call relayed as it is
                assert await metric(client, "gateway_owner_streams") == (1 if configured else 0)
                gate.release()
                got += await read_rest(events)
    assert joined(got, start=0) == reply_text(message)
    assert got[-1].json()["message"]["status"] == "complete"


async def test_the_origin_continues_from_postgres_when_its_owner_dies(
    database_url: str, pool: Pool, model_server: ModelServer
) -> None:
    process_env = {"DATABASE_URL": database_url, "OPENAI_BASE_URL": model_server.base_url, **SHORT_LEASE}
    async with genservice_process(process_env) as owner:
        config = gateway_config(database_url, owner.addr)
        async with started_gateway(config) as gateway, http_client(gateway) as client:
            with model_server.gate() as gate:
                message = content("origin's owner dies", f"[[len=1500 {gate.at(HELD_AT)}]]")
                async with client.stream("POST", "/v1/replies", json={"content": message}) as response:
                    events = stream_events(response)
                    message_id = str((await read_started(events))["message_id"])
                    got = await read_text(events, HELD_AT)
                    assert await metric(client, "gateway_owner_streams") == 1
                    got += await rest_after_the_owner_dies(owner, pool, message_id, events)
    # the browser that started the reply gets every saved character once, and the end Postgres has
    assert joined(got, start=0) == saved_error_text(got) == reply_text(message)[:HELD_AT]
