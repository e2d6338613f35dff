"""`make run`'s supervisor: as many genservice and gateway processes as asked, all serving, all stopped."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from genservice.replies.settings import ConfigError
from genservice.supervisor import StackConfig
from tests.support.gateway_harness import joined, read_all
from tests.support.model_server import ModelServer, expected_reply
from tests.support.processes import _serving, free_port


def consecutive_free_ports(count: int) -> int:
    """The first of `count` consecutive ports that are free now."""
    while True:
        first = free_port()
        probes: list[socket.socket] = []
        try:
            for port in range(first, first + count):
                probe = socket.socket()
                probes.append(probe)
                probe.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the processes whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
            found.append((int(entry.name), cmdline))
    return found


Stack = tuple[subprocess.Popen[bytes], str, str]


@pytest.fixture
def stack(database_url: str, model_server: ModelServer, tmp_path: Path) -> Iterator[Stack]:
    """The supervisor with two genservices and two gateways; its children are killed at the end, whatever happened."""
    gateway_addr = f"127.0.0.1:{free_port()}"
    genservice_addr = f"127.0.0.1:{consecutive_free_ports(2)}"
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "OPENAI_BASE_URL": model_server.base_url,
        "GATEWAY_ADDR": gateway_addr,
        "GENSERVICE_ADDR": genservice_addr,
        "GENSERVICE_PROCESSES": "2",
        "GATEWAY_PROCESSES": "2",
    }
    log = tmp_path / "stack.log"
    with log.open("wb") as output:
        popen = subprocess.Popen(
            [sys.executable, "-m", "genservice.supervisor"], env=env, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        yield popen, gateway_addr, genservice_addr
    finally:
        spawned = children(popen.pid)
        if popen.poll() is None:
            popen.kill()
            popen.wait(10)
        for pid, _ in spawned:
            # each child leads a session of its own
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


async def test_the_stack_runs_the_processes_asked_for_and_stops_them_all(stack: Stack) -> None:
    popen, gateway_addr, genservice_addr = stack
    async with httpx2.AsyncClient(base_url=f"http://{gateway_addr}", timeout=10, trust_env=False) as client:
        async with asyncio.timeout(60):
            while True:
                assert popen.poll() is None
                try:
                    if (await client.get("/healthz")).status_code == 200:
                        break
                except httpx2.TransportError:
                    pass
                await asyncio.sleep(0.2)
        spawned = children(popen.pid)
        assert sorted(cmd.split()[-1] for _, cmd in spawned) == ["gateway.server"] * 2 + ["genservice.server"] * 2
        host, _, port = genservice_addr.rpartition(":")
        for index in range(2):
            assert await _serving(f"{host}:{int(port) + index}")

        # every reply completes, whichever genservice each lands on
        for turn in range(4):
            content = f"stack {turn} {uuid.uuid4().hex[:6]} [[len=120]]"
            async with client.stream("POST", "/v1/replies", json={"content": content}) as response:
                assert response.status_code == 200
                events = await read_all(response)
            assert joined(events) == expected_reply(content)
            assert events[-1].json()["message"]["status"] == "complete"

    popen.send_signal(signal.SIGINT)
    async with asyncio.timeout(60):
        while popen.poll() is None:
            await asyncio.sleep(0.1)
    assert popen.returncode == 0
    assert all(not Path(f"/proc/{pid}").exists() for pid, _ in spawned)


def test_the_stack_takes_consecutive_genservice_ports_and_refuses_port_zero() -> None:
    config = StackConfig.from_env({"GENSERVICE_ADDR": "127.0.0.1:6000", "GENSERVICE_PROCESSES": "3"})
    assert config.genservice_addrs == ["127.0.0.1:6000", "127.0.0.1:6001", "127.0.0.1:6002"]
    assert config.gateway_processes == (os.cpu_count() or 1)
    with pytest.raises(ConfigError):
        StackConfig.from_env({"GENSERVICE_ADDR": "127.0.0.1:0"})
