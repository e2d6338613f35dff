"""A gateway going away (a deploy, a scale-down) ends its streams cleanly; their clients resume elsewhere."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import AsyncGenerator
from pathlib import Path

import httpx2

from tests.support.gateway_harness import (
    CLIENT_TIMEOUT,
    SLOW,
    Event,
    content,
    gateway_config,
    http_client,
    joined,
    read_all,
    reply_text,
    started_gateway,
    stream_events,
)
from tests.support.processes import gateway_process


async def open_reply(client: httpx2.AsyncClient, message: str) -> tuple[httpx2.Response, AsyncGenerator[Event, None]]:
    response = await client.send(client.build_request("POST", "/v1/replies", json={"content": message}), stream=True)
    assert response.status_code == 200
    return response, stream_events(response)


async def test_shutdown_lets_streams_run_for_the_grace_then_ends_them_cleanly(
    database_url: str, genservice_target: str, client: httpx2.AsyncClient
) -> None:
    grace = 0.4
    message = content("deploy", SLOW)
    config = gateway_config(database_url, genservice_target, shutdown_grace_seconds=grace)
    async with asyncio.timeout(15):
        async with started_gateway(config) as leaving, http_client(leaving) as leaving_client:
            response, events = await open_reply(leaving_client, message)
            try:
                received = [await anext(events), await anext(events)]
                began = time.monotonic()
                leaving.server.begin_shutdown()
                # the stream goes on during the grace period, then ends with a complete body: no error here
                received += [event async for event in events]
                ended = time.monotonic() - began
            finally:
                await response.aclose()
            await leaving.task
        # the stream outlived the grace period's start and was then ended, not left open
        assert grace * 0.8 <= ended < grace + 5
        assert [e.event for e in received].count("finished") == 0
        assert sum(e.event == "delta" for e in received) > 1
        cut = len(joined(received, start=0))
        # the client resumes on another gateway from its last id
        message_id = received[0].json()["message_id"]
        async with client.stream(
            "GET", f"/v1/messages/{message_id}/events", headers={"Last-Event-ID": str(cut)}
        ) as resumed:
            rest = await read_all(resumed)
    assert joined(received, start=0) + joined(rest, start=cut) == reply_text(message)


async def exit_code(popen: subprocess.Popen[bytes], seconds: float) -> int:
    async with asyncio.timeout(seconds):
        while popen.poll() is None:
            await asyncio.sleep(0.02)
    return popen.returncode


def env_for(database_url: str, genservice_target: str, grace: float) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "GENSERVICE_TARGET": genservice_target,
        "SHUTDOWN_GRACE_SECONDS": str(grace),
        "GATEWAY_JWT_SECRET": "",
    }


async def test_sigterm_drains_and_exits(database_url: str, genservice_target: str, tmp_path: Path) -> None:
    env = env_for(database_url, genservice_target, grace=0.3)
    async with gateway_process(env, tmp_path / "gateway.log") as (popen, base_url):
        async with httpx2.AsyncClient(base_url=base_url, timeout=CLIENT_TIMEOUT, trust_env=False) as client:
            response, events = await open_reply(client, content("sigterm", SLOW))
            try:
                assert (await anext(events)).event == "started"
                popen.send_signal(signal.SIGTERM)
                received = [event async for event in events]
            finally:
                await response.aclose()
            assert "finished" not in [e.event for e in received]
            assert await exit_code(popen, 10) == 0, (tmp_path / "gateway.log").read_text()
            try:
                await client.get("/healthz")
                raise AssertionError("the gateway still accepts connections")
            except httpx2.ConnectError:
                pass


async def test_a_second_signal_exits_at_once(database_url: str, genservice_target: str, tmp_path: Path) -> None:
    env = env_for(database_url, genservice_target, grace=60)
    async with gateway_process(env, tmp_path / "gateway.log") as (popen, base_url):
        async with httpx2.AsyncClient(base_url=base_url, timeout=CLIENT_TIMEOUT, trust_env=False) as client:
            response, events = await open_reply(client, content("impatient", SLOW))
            try:
                assert (await anext(events)).event == "started"
                popen.send_signal(signal.SIGTERM)
                await anext(events)  # still streaming within the grace period
                began = time.monotonic()
                popen.send_signal(signal.SIGINT)
                await exit_code(popen, 5)
            finally:
                await response.aclose()
    assert time.monotonic() - began < 5
