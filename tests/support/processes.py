"""Real processes for the tests: genservice and gateway started as their console scripts would be."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from genservice.v1 import genservice_pb2 as pb
from genservice.v1 import genservice_pb2_grpc as pb_grpc


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Process:
    popen: subprocess.Popen[bytes]
    addr: str

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    async def wait(self, seconds: float = 20) -> int:
        async with asyncio.timeout(seconds):
            while self.popen.poll() is None:
                await asyncio.sleep(0.05)
        return self.popen.returncode


async def _serving(target: str) -> bool:
    async with grpc.aio.insecure_channel(target) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
        except grpc.aio.AioRpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


@asynccontextmanager
async def genservice_process(env: Mapping[str, str]) -> AsyncIterator[Process]:
    """`python -m genservice.server` on a free port, ready (health SERVING); killed if still alive at the end."""
    addr = f"127.0.0.1:{free_port()}"
    popen = subprocess.Popen(
        [sys.executable, "-m", "genservice.server"],
        env={**os.environ, **env, "GENSERVICE_ADDR": addr},
    )
    process = Process(popen, addr)
    try:
        async with asyncio.timeout(30):
            while not await _serving(addr):
                if popen.poll() is not None:
                    raise RuntimeError(f"genservice exited with {popen.returncode}")
                await asyncio.sleep(0.1)
        yield process
    finally:
        if popen.poll() is None:
            popen.send_signal(signal.SIGKILL)
        popen.wait(10)


@asynccontextmanager
async def reply_on_a_genservice_process(
    env: Mapping[str, str], request: pb.StreamReplyRequest
) -> AsyncIterator[tuple[Process, Any]]:
    """A reply started on a genservice process of its own: the process and the open StreamReply call."""
    async with genservice_process(env) as process, grpc.aio.insecure_channel(process.addr) as channel:
        yield process, pb_grpc.GenerationServiceStub(channel).StreamReply(request)


@asynccontextmanager
async def http_process(
    args: list[str], env: Mapping[str, str], log: Path, ready_url: str
) -> AsyncIterator[subprocess.Popen[bytes]]:
    """`python ARGS...` logging to `log`, ready once `ready_url` answers 200; killed if still alive at the end."""
    with log.open("wb") as output:
        popen = subprocess.Popen(
            [sys.executable, *args], env={**os.environ, **env}, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        async with asyncio.timeout(30), httpx2.AsyncClient(timeout=5, trust_env=False) as probe:
            while True:
                assert popen.poll() is None, log.read_text()
                try:
                    if (await probe.get(ready_url)).status_code == 200:
                        break
                except httpx2.TransportError:
                    pass
                await asyncio.sleep(0.05)
        yield popen
    finally:
        if popen.poll() is None:
            popen.kill()
        popen.wait(10)


@asynccontextmanager
async def gateway_process(env: dict[str, str], log: Path) -> AsyncIterator[tuple[subprocess.Popen[bytes], str]]:
    """`python -m gateway.server` on a free port, answering /healthz."""
    addr = f"127.0.0.1:{free_port()}"
    args = ["-m", "gateway.server"]
    async with http_process(args, {**env, "GATEWAY_ADDR": addr}, log, f"http://{addr}/healthz") as popen:
        yield popen, f"http://{addr}"


@dataclass(frozen=True)
class Finished:
    returncode: int
    stdout: str
    stderr: str


async def run_command(*argv: str, env: Mapping[str, str] | None = None, seconds: float = 30) -> Finished:
    """Run a program to its end, bounded by `seconds`; killed if it outlives them."""
    process = await asyncio.create_subprocess_exec(
        *argv, env=None if env is None else dict(env), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(seconds):
            stdout, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return Finished(process.returncode, stdout.decode(), stderr.decode())
