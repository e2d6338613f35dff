"""The per-hop CPU budget of one emitted token (`make bench`): each hop of a reply measured alone.

Each hop runs in processes of its own, loaded as the replies benchmark loads the product (STREAMS
paced streams); the CPU of those processes over the load, read from /proc, is divided by the events
they carried:

- model read: genservice's `stream_reply` (the openai client over aiohttp) reading the bench's model
  server, 50 tokens/s per stream; per token.
- gRPC delta: a grpc.aio server sending every stream's delta on one `WatchReplies` stream each
  shared tick, as a busy genservice does, and a grpc.aio client reading them and handing each to
  its reply, as a gateway does; per delta, each side.
- SSE frame: the gateway's relay and `EventStreamResponse` under uvicorn, as `make run` serves them;
  per frame written to a reader.

Then the product's budget per token: one model read; one gRPC delta per gateway per tick, two
gateways (the origin's and the followers'); one SSE frame per reader per tick, three readers. The
save batcher and Postgres are left out, so the budget is a floor. Two cores divided by it bound the
streams the product could carry at all, with no room left for the readers or queueing.

    python -m bench.hops [--streams 100] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import uvicorn
import uvloop
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.model_server import ModelServer, StreamPlan, stream_content
from bench.processes import free_port
from bench.report import report
from gateway.metrics import GatewayMetrics
from gateway.relay import EventStreamResponse, Relay
from genservice.model import make_client, stream_reply
from genservice.replies.records import Role
from genservice.v1 import genservice_pb2 as pb
from genservice.v1 import genservice_pb2_grpc as pb_grpc

TOKEN_RATE = 50.0
TICK_SECONDS = 0.04
GATEWAYS_PER_STREAM = 2
READERS_PER_STREAM = 3
DELTA_TEXT = "abcdefgh"
CORES = 2
TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


# the processes under load: each prints "ready", waits for "go" on stdin, runs, and prints its count


async def _go() -> None:
    report("ready")
    sys.stdout.flush()
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


def _done(count: int) -> None:
    report(json.dumps({"events": count}))
    sys.stdout.flush()


async def _model_reader(base_url: str, keys: list[str]) -> None:
    client = make_client(base_url, None, max_retries=0, idle_timeout=30.0)

    async def read(key: str) -> int:
        pieces = 0
        async for piece in stream_reply(client, "bench", [(Role.USER, stream_content(key))], 30.0):
            pieces += bool(piece.text)
        return pieces

    # the first reply warms the client (lazy imports, the connection pool) before the load is measured
    await read(keys[0])
    await _go()
    _done(sum(await asyncio.gather(*(read(key) for key in keys[1:]))))
    await client.close()


class _Tick:
    """One shared tick: every stream waits on the same event, replaced on each tick."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        asyncio.get_running_loop().call_later(TICK_SECONDS, self._fire)

    def _fire(self) -> None:
        self.event.set()
        self.event = asyncio.Event()
        asyncio.get_running_loop().call_later(TICK_SECONDS, self._fire)


async def _deltas(tick: _Tick, count: int) -> AsyncIterator[pb.ReplyEvent]:
    for offset in range(0, count * len(DELTA_TEXT), len(DELTA_TEXT)):
        await tick.event.wait()
        yield pb.ReplyEvent(delta=pb.ReplyDelta(offset=offset, text=DELTA_TEXT))


async def _grpc_server(port: int, messages: int, streams: int) -> None:
    tick = _Tick()

    async def watch(
        requests: AsyncIterator[pb.WatchRepliesRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.WatchRepliesResponse]:
        # grpc.aio streams a handler's results only when the handler itself is an async generator
        for offset in range(0, messages * len(DELTA_TEXT), len(DELTA_TEXT)):
            await tick.event.wait()
            yield pb.WatchRepliesResponse(
                events=[
                    pb.WatchedEvent(
                        watch_id=watch_id, event=pb.ReplyEvent(delta=pb.ReplyDelta(offset=offset, text=DELTA_TEXT))
                    )
                    for watch_id in range(streams)
                ]
            )

    handler = grpc.stream_stream_rpc_method_handler(
        watch,
        request_deserializer=pb.WatchRepliesRequest.FromString,
        response_serializer=pb.WatchRepliesResponse.SerializeToString,
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("genservice.v1.GenerationService", {"WatchReplies": handler}),)
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await _go()
    await server.wait_for_termination()


async def _grpc_client(port: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GenerationServiceStub(channel)
        await channel.channel_ready()
        await _go()
        ends: dict[int, int] = {}
        async for response in stub.WatchReplies():
            for watched in response.events:
                # what a gateway's reader does per delta: find its reply, take the text
                delta = watched.event.delta
                ends[watched.watch_id] = delta.offset + len(delta.text)
        _done(sum(end // len(DELTA_TEXT) for end in ends.values()))


async def _sse_server(port: int, messages: int) -> None:
    relay = Relay(15.0, GatewayMetrics(CollectorRegistry()))
    started = pb.ReplyEvent(started=pb.ReplyStarted(message_id="bench", conversation_id="bench"))
    tick: list[_Tick] = []

    async def stream(request: Request) -> Response:
        return EventStreamResponse(relay.body(started, _deltas(tick[0], messages), "follow"))

    server = uvicorn.Server(
        uvicorn.Config(
            Starlette(routes=[Route("/s", stream)]),
            host="127.0.0.1",
            port=port,
            log_config=None,
            access_log=False,
            lifespan="off",
        )
    )
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    tick.append(_Tick())
    await _go()
    await serving


def _role(argv: Sequence[str]) -> None:
    """One hop's process, on uvloop as genservice and the gateway run."""
    role, *args = argv
    if role == "model-reader":
        uvloop.run(_model_reader(args[0], args[1:]))
    elif role == "grpc-server":
        uvloop.run(_grpc_server(int(args[0]), int(args[1]), int(args[2])))
    elif role == "grpc-client":
        uvloop.run(_grpc_client(int(args[0])))
    elif role == "sse-server":
        uvloop.run(_sse_server(int(args[0]), int(args[1])))
    else:
        raise SystemExit(f"unknown role {role}")


# the parent: starts the processes, loads them, reads their CPU


@dataclass
class _Loaded:
    popen: subprocess.Popen[str]

    @classmethod
    async def start(cls, *args: str) -> _Loaded:
        popen = subprocess.Popen(
            [sys.executable, "-m", "bench.hops", "--role", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        loaded = cls(popen)
        if await loaded._line() != "ready":
            loaded.stop()
            raise RuntimeError(f"bench.hops {args[0]} did not start")
        return loaded

    async def _line(self) -> str:
        assert self.popen.stdout is not None
        return (await asyncio.to_thread(self.popen.stdout.readline)).strip()

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.popen.pid}/stat", "rb") as file:
            fields = file.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS_PER_SECOND

    def go(self) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write("go\n")
        self.popen.stdin.flush()

    async def events(self) -> int:
        return int(json.loads(await self._line())["events"])

    def stop(self) -> None:
        self.popen.kill()
        self.popen.wait()


async def _model_read(streams: int, seconds: float) -> float:
    """CPU µs per token of the model read."""
    model = ModelServer()
    await model.start()
    tokens = int(TOKEN_RATE * seconds)
    plans = [
        StreamPlan(key=f"hop-{i}", tokens=model.take_tokens(tokens), interval=1 / TOKEN_RATE)
        for i in range(streams + 1)
    ]
    for plan in plans:
        model.register(plan)
    reader = await _Loaded.start("model-reader", model.base_url, *(plan.key for plan in plans))
    try:
        before = reader.cpu_seconds()
        reader.go()
        count = await reader.events()
        return (reader.cpu_seconds() - before) / count * 1e6
    finally:
        reader.stop()
        await model.close()


async def _grpc_delta(streams: int, seconds: float) -> tuple[float, float]:
    """CPU µs per delta of the gRPC server and of its client."""
    port = free_port()
    messages = int(seconds / TICK_SECONDS)
    server = await _Loaded.start("grpc-server", str(port), str(messages), str(streams))
    client = await _Loaded.start("grpc-client", str(port))
    try:
        before = server.cpu_seconds(), client.cpu_seconds()
        client.go()
        count = await client.events()
        return (
            (server.cpu_seconds() - before[0]) / count * 1e6,
            (client.cpu_seconds() - before[1]) / count * 1e6,
        )
    finally:
        client.stop()
        server.stop()


async def _read_sse(port: int) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /s HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
    body = await reader.read(-1)
    writer.close()
    return body.count(b"event: delta")


async def _sse_frame(streams: int, seconds: float) -> float:
    """CPU µs per SSE frame of the gateway's relay under uvicorn."""
    port = free_port()
    server = await _Loaded.start("sse-server", str(port), str(int(seconds / TICK_SECONDS)))
    try:
        before = server.cpu_seconds()
        frames = sum(await asyncio.gather(*(_read_sse(port) for _ in range(streams))))
        return (server.cpu_seconds() - before) / frames * 1e6
    finally:
        server.stop()


async def _measure(streams: int, seconds: float) -> None:
    started = time.monotonic()
    read = await _model_read(streams, seconds)
    send, receive = await _grpc_delta(streams, seconds)
    frame = await _sse_frame(streams, seconds)
    ticks_per_token = 1 / (TICK_SECONDS * TOKEN_RATE)
    rows = [
        ("model read (genservice)", read, 1.0),
        ("gRPC delta sent (genservice)", send, GATEWAYS_PER_STREAM * ticks_per_token),
        ("gRPC delta read (gateway)", receive, GATEWAYS_PER_STREAM * ticks_per_token),
        ("SSE frame written (gateway)", frame, READERS_PER_STREAM * ticks_per_token),
    ]
    report(f"\nCPU per event of each hop, measured alone at {streams} streams ({seconds:g} s each):")
    report(f"{'hop':32} | {'µs/event':>8} | {'events/token':>12} | {'µs/token':>8}")
    report(f"{'-' * 32}-+-{'-' * 8}-+-{'-' * 12}-+-{'-' * 8}")
    for name, cost, per_token in rows:
        report(f"{name:32} | {cost:8.1f} | {per_token:12.2f} | {cost * per_token:8.1f}")
    budget = sum(cost * per_token for _, cost, per_token in rows)
    bound = CORES * 1e6 / (budget * TOKEN_RATE)
    report(f"{'sum per token, saves left out':32} | {'':8} | {'':12} | {budget:8.1f}")
    report(
        f"\n{CORES} cores at that cost carry at most {bound:.0f} streams of {TOKEN_RATE:g} tokens/s"
        f" (with a {TICK_SECONDS * 1000:g} ms tick), before the readers' own CPU and any queueing"
    )
    report(f"total time: {time.monotonic() - started:.0f} s")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--role":
        _role(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=100, help="streams at once (default 100)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of load per hop (default 10)")
    args = parser.parse_args()
    asyncio.run(_measure(args.streams, args.seconds))


if __name__ == "__main__":
    main()
