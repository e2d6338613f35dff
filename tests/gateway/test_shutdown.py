"""A gateway going away (a deploy, a scale-down) ends its streams cleanly; their clients resume elsewhere."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx2

from tests.support.gateway_harness import (
    CLIENT_TIMEOUT,
    Event,
    assert_streaming,
    content,
    gateway_config,
    http_client,
    joined,
    read_all,
    read_started,
    read_to_the_gate,
    reply_text,
    started_gateway,
    stream_events,
)
from tests.support.model_server import ModelServer
from tests.support.processes import gateway_process


async def open_reply(client: httpx2.AsyncClient, message: str) -> tuple[httpx2.Response, AsyncGenerator[Event, None]]:
    response = await client.send(client.build_request("POST", "/v1/replies", json={"content": message}), stream=True)
    assert response.status_code == 200
    return response, stream_events(response)


async def test_shutdown_lets_streams_run_for_the_grace_then_ends_them_cleanly(
    database_url: str, genservice_target: str, client: httpx2.AsyncClient, model_server: ModelServer
) -> None:
    grace = 0.4
    config = gateway_config(database_url, genservice_target, shutdown_grace_seconds=grace)
    with model_server.gate() as gate:
        message = content("deploy", f"[[len=1500 {gate.at(100)}]]")
        async with asyncio.timeout(15):
            async with started_gateway(config) as leaving, http_client(leaving) as leaving_client:
                response, events = await open_reply(leaving_client, message)
                try:
                    message_id, received = await read_to_the_gate(events, 100, client)
                    began = time.monotonic()
                    leaving.server.begin_shutdown()
                    # the stream stays open during the grace period, then ends with a complete body: no error here
                    received += [event async for event in events]
                    ended = time.monotonic() - began
                finally:
                    await response.aclose()
                await leaving.task
            # the stream outlived the grace period's start and was then ended, not left open
            assert grace * 0.8 <= ended < grace + 5
            assert [e.event for e in received].count("finished") == 0
            assert joined(received, start=0) == reply_text(message)[:100]
            # the client resumes on another gateway from its last id
            gate.release()
            async with client.stream(
                "GET", f"/v1/messages/{message_id}/events", headers={"Last-Event-ID": "100"}
            ) as resumed:
                rest = await read_all(resumed)
    assert joined(received, start=0) + joined(rest, start=100) == reply_text(message)


async def exit_code(popen: subprocess.Popen[bytes], seconds: float) -> int:
    async with asyncio.timeout(seconds):
        while popen.poll() is None:
            await asyncio.sleep(0.02)
    return popen.returncode


async def logged(log: Path, text: str, seconds: float = 10) -> None:
    """Wait until the process wrote `text` to its log."""
    async with asyncio.timeout(seconds):
        while text not in log.read_text():
            await asyncio.sleep(0.02)


def env_for(database_url: str, genservice_target: str, grace: float) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "GENSERVICE_TARGET": genservice_target,
        "SHUTDOWN_GRACE_SECONDS": str(grace),
        "GATEWAY_JWT_SECRET": "",
    }


@asynccontextmanager
async def held_reply_on_a_gateway_process(
    env: dict[str, str], log: Path, model_server: ModelServer, label: str
) -> AsyncIterator[tuple[subprocess.Popen[bytes], httpx2.AsyncClient, AsyncGenerator[Event, None], str]]:
    """A gateway process streaming a reply held at a gate before any text: the process, a client of it, the
    reply's events after `started`, and its message id."""
    with model_server.gate() as gate:
        async with (
            gateway_process(env, log) as (popen, base_url),
            httpx2.AsyncClient(base_url=base_url, timeout=CLIENT_TIMEOUT, trust_env=False) as leaving,
        ):
            response, events = await open_reply(leaving, content(label, f"[[len=500 {gate.at(0)}]]"))
            try:
                message_id = (await read_started(events))["message_id"]
                yield popen, leaving, events, message_id
            finally:
                await response.aclose()


async def test_sigterm_drains_and_exits(
    database_url: str, genservice_target: str, tmp_path: Path, client: httpx2.AsyncClient, model_server: ModelServer
) -> None:
    env = env_for(database_url, genservice_target, grace=0.3)
    log = tmp_path / "gateway.log"
    async with held_reply_on_a_gateway_process(env, log, model_server, "sigterm") as (popen, leaving, events, message):
        await assert_streaming(client, message)
        popen.send_signal(signal.SIGTERM)
        received = [event async for event in events]
        assert "finished" not in [e.event for e in received]
        assert await exit_code(popen, 10) == 0, log.read_text()
        try:
            await leaving.get("/healthz")
            raise AssertionError("the gateway still accepts connections")
        except httpx2.ConnectError:
            pass


async def test_a_second_signal_exits_at_once(
    database_url: str, genservice_target: str, tmp_path: Path, client: httpx2.AsyncClient, model_server: ModelServer
) -> None:
    # a drain would take the whole grace period: the reply is held at a gate and never ends by itself
    grace = 60.0
    env = env_for(database_url, genservice_target, grace=grace)
    log = tmp_path / "gateway.log"
    async with held_reply_on_a_gateway_process(env, log, model_server, "impatient") as (popen, _, _, message):
        popen.send_signal(signal.SIGTERM)
        await logged(log, "draining")
        await assert_streaming(client, message)
        assert popen.poll() is None, "the gateway exited on the first signal"
        began = time.monotonic()
        popen.send_signal(signal.SIGINT)
        # far from both sides: an exit at once takes well under a second, a drain a minute
        await exit_code(popen, grace / 2)
        exited_after = time.monotonic() - began
    assert exited_after < grace / 4, exited_after
