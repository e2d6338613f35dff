"""`make run`: Postgres, demo-llm (when no model is configured), genservices and gateways, in the foreground.

grpc.aio and uvicorn each run on one core, so the stack runs GENSERVICE_PROCESSES genservices (on
consecutive ports from GENSERVICE_ADDR's; every gateway spreads its calls over all of them) and
GATEWAY_PROCESSES gateways sharing GATEWAY_ADDR (SO_REUSEPORT: the kernel spreads connections).
Both default to the number of cores. Any of them serves any reader: the truth is in Postgres.

Ctrl-C (or SIGTERM) stops them all: gateways first, then genservices (which drain their
generations), then demo-llm, then the embedded Postgres.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from types import FrameType

from genservice.replies.database import postgres_url
from genservice.replies.settings import ConfigError, env_addr, env_int

log = logging.getLogger("stack")

STOP_SECONDS = 20


@dataclass(frozen=True)
class StackConfig:
    gateway_addr: str
    genservice_addrs: list[str]
    gateway_processes: int

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> StackConfig:
        cores = os.cpu_count() or 1
        gateway_addr = env_addr(env, "GATEWAY_ADDR", "127.0.0.1:8080")
        host, _, port = env_addr(env, "GENSERVICE_ADDR", "127.0.0.1:50051").rpartition(":")
        genservices = env_int(env, "GENSERVICE_PROCESSES", cores)
        if int(port) == 0 or int(port) + genservices - 1 > 65535:
            raise ConfigError(f"GENSERVICE_ADDR needs {genservices} ports from its own, got port {port}")
        return cls(
            gateway_addr=gateway_addr,
            genservice_addrs=[f"{host}:{int(port) + index}" for index in range(genservices)],
            gateway_processes=env_int(env, "GATEWAY_PROCESSES", cores),
        )


def _spawn(name: str, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    # a session of its own: Ctrl-C reaches the stack, which stops each part in order
    return subprocess.Popen([sys.executable, "-m", name], env=dict(env), start_new_session=True)


def _listening(addr: str) -> bool:
    host, _, port = addr.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _stop(processes: list[tuple[str, subprocess.Popen[bytes]]]) -> None:
    """Stop in reverse order of start, each kind at once: every gateway, then every genservice, ..."""
    for _kind, group in itertools.groupby(reversed(processes), key=lambda item: item[0].split("-")[0]):
        running = [(name, process) for name, process in group if process.poll() is None]
        for name, process in running:
            log.info("stopping %s", name)
            process.send_signal(signal.SIGTERM)
        for _name, process in running:
            try:
                process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def run(env: Mapping[str, str]) -> int:
    config = StackConfig.from_env(env)
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    processes: list[tuple[str, subprocess.Popen[bytes]]] = []
    with postgres_url(env.get("DATABASE_URL") or None) as url:
        child_env = {**env, "DATABASE_URL": url, "GENSERVICE_TARGET": ",".join(config.genservice_addrs)}
        try:
            if not env.get("OPENAI_BASE_URL"):
                log.info("OPENAI_BASE_URL is unset: starting demo-llm, the offline demo model")
                processes.append(("demo-llm", _spawn("genservice.demo_llm", child_env)))
            for index, addr in enumerate(config.genservice_addrs):
                genservice_env = {**child_env, "GENSERVICE_ADDR": addr, "GENSERVICE_ADVERTISE_ADDR": addr}
                processes.append((f"genservice-{index}", _spawn("genservice.server", genservice_env)))
            log.info("%d genservice and %d gateway processes", len(config.genservice_addrs), config.gateway_processes)
            page = f"http://{config.gateway_addr}/"
            gateways_started = announced = False
            while not stopping:
                exited = [(name, p.returncode) for name, p in processes if p.poll() is not None]
                if exited:
                    log.error("%s exited (code %s); stopping the rest", *exited[0])
                    return 1
                if not gateways_started and all(_listening(addr) for addr in config.genservice_addrs):
                    # the gateways last, so that their first health checks find genservice up
                    for index in range(config.gateway_processes):
                        gateway_env = {**child_env, "GATEWAY_NAME": f"gateway-{index}"}
                        processes.append((f"gateway-{index}", _spawn("gateway.server", gateway_env)))
                    gateways_started = True
                if not announced and _healthy(page + "healthz"):
                    log.info("ready: open %s in a browser (Ctrl-C stops everything)", page)
                    announced = True
                time.sleep(0.2)
            return 0
        finally:
            _stop(processes)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="[stack] %(message)s")
    try:
        sys.exit(run(os.environ))
    except ConfigError as exc:
        sys.exit(f"make run: {exc}")


if __name__ == "__main__":
    main()
