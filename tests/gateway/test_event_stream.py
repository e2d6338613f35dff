"""An event stream's response: its bytes on the wire, and a reader that leaves ending its own stream only."""

from __future__ import annotations

import asyncio

import httpx2

from gateway.server import RunningGateway
from tests.support.gateway_harness import (
    content,
    joined,
    metric,
    read_all,
    read_to_the_gate,
    reply_text,
    stream_events,
    until,
)
from tests.support.model_server import ModelServer


async def test_a_finished_reply_read_again_is_a_chunked_event_stream(
    gateway: RunningGateway, client: httpx2.AsyncClient
) -> None:
    message = content("wire", "[[len=40]]")
    async with client.stream("POST", "/v1/replies", json={"content": message}) as response:
        message_id = (await read_all(response))[0].json()["message_id"]
    reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
    try:
        writer.write(f"GET /v1/messages/{message_id}/events HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        async with asyncio.timeout(10):
            raw = await reader.read(-1)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 200 OK"
    headers = dict(line.split(b": ", 1) for line in lines[1:])
    assert headers[b"content-type"] == b"text/event-stream; charset=utf-8"
    assert headers[b"cache-control"] == b"no-cache" and headers[b"x-accel-buffering"] == b"no"
    assert headers[b"transfer-encoding"] == b"chunked" and b"content-length" not in headers
    # every write is one chunk; the last is empty
    chunks = []
    while body:
        size, _, rest = body.partition(b"\r\n")
        chunks.append(rest[: int(size, 16)])
        assert rest[int(size, 16) : int(size, 16) + 2] == b"\r\n"
        body = rest[int(size, 16) + 2 :]
    assert chunks[-1] == b"" and all(chunks[:-1])
    text = b"".join(chunks).decode()
    assert text.startswith("event: started\n") and "event: finished\n" in text
    assert f"id: {len(reply_text(message))}\nevent: delta\n" in text


async def test_a_reader_that_leaves_ends_only_its_own_stream(
    client: httpx2.AsyncClient, model_server: ModelServer
) -> None:
    with model_server.gate() as gate:
        message = content("two readers", f"[[len=600 {gate.at(100)}]]")
        gone_before = await metric(client, 'gateway_streams_ended_early_total{reason="client_gone"}')
        async with asyncio.timeout(15):
            async with client.stream("POST", "/v1/replies", json={"content": message}) as origin:
                origin_events = stream_events(origin)
                message_id, deltas = await read_to_the_gate(origin_events, 100, client)
                async with client.stream("GET", f"/v1/messages/{message_id}/events") as follower:
                    await read_to_the_gate(stream_events(follower), 100, client)
                    assert await metric(client, 'gateway_open_streams{route="follow"}') == 1

                async def follower_closed() -> bool:
                    return await metric(client, 'gateway_open_streams{route="follow"}') == 0

                await until(follower_closed)
                assert await metric(client, 'gateway_open_streams{route="reply"}') == 1
                gate.release()
                rest = [event async for event in origin_events]
    assert rest[-1].json()["message"]["status"] == "complete"
    assert joined(deltas + rest, start=0) == reply_text(message)
    assert await metric(client, 'gateway_streams_ended_early_total{reason="client_gone"}') == gone_before + 1
