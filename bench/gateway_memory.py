"""Benchmark (`make bench`): the gateway's memory when its clients stop reading, as ratios to a baseline.

A client that stops reading must not make the gateway buffer the reply: each stream holds at most
a bounded outbox of text not yet sent (gateway/relay.py), then gRPC's flow control pushes back.
Measured as the gateway process's resident memory with N streams of a long, fast reply whose
clients (a) read everything and (b) read nothing, both against the idle gateway (the baseline), in
the same run.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import tempfile
from pathlib import Path

import httpx2

from bench.report import report
from genservice.config import GenServiceConfig
from genservice.replies.database import postgres_url
from genservice.server import running_service
from tests.support.model_server import ModelServer
from tests.support.processes import gateway_process

STREAMS = 50
REPLY = "[[len=400000 chunk=200 delay=0]]"


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def start_reply(client: httpx2.AsyncClient, n: int) -> str:
    async with client.stream("POST", "/v1/replies", json={"content": f"bench {n} {REPLY}"}) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                return str(json.loads(line[6:])["message_id"])
    raise RuntimeError("no started event")


async def stalled_stream(host: str, port: int, message_id: str) -> socket.socket:
    """A follow stream whose client sends its request and then never reads."""
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(f"GET /v1/messages/{message_id}/events HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    return sock


async def reading_stream(client: httpx2.AsyncClient, message_id: str) -> int:
    size = 0
    async with client.stream("GET", f"/v1/messages/{message_id}/events") as response:
        async for chunk in response.aiter_bytes():
            size += len(chunk)
    return size


async def main() -> None:
    with tempfile.TemporaryDirectory() as data, postgres_url(os.environ.get("DATABASE_URL"), Path(data)) as url:
        with ModelServer() as model:
            config = GenServiceConfig(addr="127.0.0.1:0", database_url=url, openai_base_url=model.base_url)
            async with running_service(config) as service:
                env = {"DATABASE_URL": url, "GENSERVICE_TARGET": service.target, "GATEWAY_JWT_SECRET": ""}
                async with gateway_process(env, Path(data) / "gateway.log") as (popen, base_url):
                    host, port = base_url.removeprefix("http://").split(":")
                    limits = httpx2.Limits(max_connections=STREAMS + 5, max_keepalive_connections=0)
                    async with httpx2.AsyncClient(base_url=base_url, timeout=120, limits=limits) as client:
                        await reading_stream(client, await start_reply(client, -1))
                        baseline = rss_bytes(popen.pid)

                        ids = [await start_reply(client, n) for n in range(STREAMS)]
                        sizes = await asyncio.gather(*(reading_stream(client, i) for i in ids))
                        reading = rss_bytes(popen.pid)

                        ids = [await start_reply(client, STREAMS + n) for n in range(STREAMS)]
                        socks = [await stalled_stream(host, int(port), i) for i in ids]
                        # every reply is written whole meanwhile; the stalled streams could have buffered it all
                        for message_id in ids:
                            await reading_stream(client, message_id)
                        stalled = rss_bytes(popen.pid)
                        for sock in socks:
                            sock.close()
    mb = 1024 * 1024
    report(f"gateway RSS, {STREAMS} streams of a {sum(sizes) // STREAMS // 1000} kB SSE reply each:")
    report(f"  idle (baseline)    {baseline / mb:6.1f} MB")
    report(f"  clients reading    {reading / mb:6.1f} MB  ratio {reading / baseline:.2f}")
    report(f"  clients not reading{stalled / mb:6.1f} MB  ratio {stalled / baseline:.2f}")
    report(f"  (the replies the stalled streams did not take: {STREAMS * sum(sizes) / len(sizes) / mb:.0f} MB)")


if __name__ == "__main__":
    asyncio.run(main())
