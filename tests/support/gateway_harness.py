"""Gateways for the tests: the real app on a real uvicorn, in-process, on a free port; and an SSE reader."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import socket
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx2

from gateway.config import GatewayConfig
from gateway.server import RunningGateway, running_gateway
from genservice.replies.database import Pool
from tests.support.model_server import expected_reply

CLIENT_TIMEOUT = httpx2.Timeout(10.0)


@dataclass(frozen=True)
class Event:
    event: str
    data: str
    # the event's own id field (None when it has none), not the sticky last-event-id
    id: str | None

    def json(self) -> Any:
        return json.loads(self.data)


@dataclass(frozen=True)
class Comment:
    text: str


_LINE = re.compile(r"\r\n|\r|\n")


def parse_lines(lines: list[str]) -> list[Event | Comment]:
    """SSE lines (no line breaks) to events and comments, as the HTML standard's parser reads them."""
    items: list[Event | Comment] = []
    data: list[str] = []
    event, event_id, has_data = "", None, False
    for line in lines:
        if not line:
            if has_data:
                items.append(Event(event or "message", "\n".join(data), event_id))
            event, data, event_id, has_data = "", [], None, False
            continue
        if line.startswith(":"):
            items.append(Comment(line[1:].removeprefix(" ")))
            continue
        name, sep, value = line.partition(":")
        value = value.removeprefix(" ") if sep else ""
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
            has_data = True
        elif name == "id" and "\x00" not in value:
            event_id = value
    return items


def parse(text: str) -> list[Event | Comment]:
    lines = _LINE.split(text)
    # the text after the last line break is an unfinished line
    return parse_lines(lines[:-1])


async def stream_items(response: httpx2.Response) -> AsyncGenerator[Event | Comment, None]:
    """Events and comments as they arrive on an open response."""
    assert response.headers["content-type"].startswith("text/event-stream"), response.headers["content-type"]
    buffer = ""
    pending: list[str] = []
    async for chunk in response.aiter_text():
        buffer += chunk
        # a CR at the end may be the first half of a CRLF
        cut = len(buffer) - 1 if buffer.endswith("\r") else len(buffer)
        lines = _LINE.split(buffer[:cut])
        buffer = lines.pop() + buffer[cut:]
        for line in lines:
            pending.append(line)
            if not line:
                for item in parse_lines(pending):
                    yield item
                pending = []


async def stream_events(response: httpx2.Response) -> AsyncGenerator[Event, None]:
    async for item in stream_items(response):
        if isinstance(item, Event):
            yield item


async def read_all(response: httpx2.Response, seconds: float = 15) -> list[Event]:
    async with asyncio.timeout(seconds):
        return [event async for event in stream_events(response)]


async def read_rest(events: AsyncGenerator[Event, None], seconds: float = 15) -> list[Event]:
    """What is left of an open stream, to its end."""
    async with asyncio.timeout(seconds):
        return [event async for event in events]


def joined(events: list[Event], start: int | None = None) -> str:
    """The deltas' text, checking each starts where the previous ended and its id is the offset after it."""
    text = ""
    for event in events:
        if event.event != "delta":
            continue
        delta = event.json()
        if start is None:
            start = delta["offset"]
        assert delta["offset"] == start + len(text), "a gap or a repeated character"
        text += delta["text"]
        assert event.id == str(delta["offset"] + len(delta["text"])), "a delta's id is the offset after its text"
    return text


async def read_text(events: AsyncGenerator[Event, None], chars: int, start: int = 0) -> list[Event]:
    """Events from an open stream until its deltas hold at least `chars` characters (the first at `start`)."""
    got: list[Event] = []
    async with asyncio.timeout(10):
        while len(joined(got, start)) < chars:
            got.append(await anext(events))
    return got


async def read_started(events: AsyncGenerator[Event, None]) -> Any:
    """An open stream's first event, `started`: its data."""
    async with asyncio.timeout(10):
        started = await anext(events)
    assert started.event == "started", started
    return started.json()


async def assert_streaming(client: httpx2.AsyncClient, message_id: str) -> None:
    """The message is saved as streaming right now: what the test does next happens mid-reply."""
    status = (await client.get(f"/v1/messages/{message_id}")).json()["status"]
    assert status == "streaming", status


async def read_to_the_gate(
    events: AsyncGenerator[Event, None], chars: int, client: httpx2.AsyncClient
) -> tuple[str, list[Event]]:
    """A reply's stream held at a gate after `chars`: its message id and deltas to there, once it is streaming."""
    message_id = str((await read_started(events))["message_id"])
    deltas = await read_text(events, chars)
    await assert_streaming(client, message_id)
    return message_id, deltas


def last_id(events: list[Event]) -> str:
    """The id a reconnecting EventSource would send: the last one seen."""
    ids = [event.id for event in events if event.id is not None]
    assert ids, "no event with an id"
    return ids[-1]


def content(label: str, directive: str = "") -> str:
    """A user message of its own (so its reply is fresh), with an optional model directive."""
    return f"{label} {uuid.uuid4().hex[:8]} {directive}".strip()


def reply_text(message: str) -> str:
    return expected_reply(message)


async def metric(client: httpx2.AsyncClient, name: str) -> float:
    """A sample's value from /metrics, e.g. `gateway_open_streams{route="reply"}`; 0 when absent."""
    text = (await client.get("/metrics")).text
    values = [line.rsplit(" ", 1)[1] for line in text.splitlines() if line.startswith(name + " ")]
    return float(values[0]) if values else 0.0


async def until(check: Callable[[], Awaitable[bool]], seconds: float = 5) -> None:
    """Poll `check` until it holds, for what the gateway shows no event for (a metric, a row)."""
    async with asyncio.timeout(seconds):
        while not await check():
            await asyncio.sleep(0.02)


async def listener_pids(pool: Pool, application_name: str) -> list[int]:
    """The backends LISTENing for a process, found by the application_name it gives them."""
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND query ILIKE 'LISTEN%%'",
            (application_name,),
        )
        return [row["pid"] for row in await cursor.fetchall()]


async def forget_owner_address(pool: Pool, client: httpx2.AsyncClient, message_id: str) -> None:
    """The message names no owner address any more: its next followers go through Postgres LISTEN, once the
    gateway no longer watches it for a stream that has closed (a reply it watches is followed there)."""
    async with pool.connection() as conn:
        await conn.execute("UPDATE messages SET owner_addr = NULL WHERE id = %s", (message_id,))

    async def unwatched() -> bool:
        return await metric(client, "gateway_owner_streams") == 0

    await until(unwatched)


def gateway_config(database_url: str, genservice_target: str, **changes: Any) -> GatewayConfig:
    config = GatewayConfig(
        addr="127.0.0.1:0",
        genservice_target=genservice_target,
        database_url=database_url,
        name=f"gw-test-{uuid.uuid4().hex[:8]}",
        shutdown_grace_seconds=2.0,
        genservice_timeout_seconds=5.0,
        health_timeout_seconds=1.0,
    )
    return dataclasses.replace(config, **changes)


@asynccontextmanager
async def started_gateway(config: GatewayConfig) -> AsyncIterator[RunningGateway]:
    """A gateway serving until the block ends (its start is bounded inside running_gateway)."""
    async with running_gateway(config) as running:
        yield running


@asynccontextmanager
async def http_client(running: RunningGateway, **kwargs: Any) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(
        base_url=running.base_url, timeout=CLIENT_TIMEOUT, trust_env=False, **kwargs
    ) as client:
        yield client


def closed_port() -> int:
    """A port that nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
