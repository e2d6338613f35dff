"""`make run`: Postgres, demo-llm (when no model is configured), genservice and gateway, in the foreground.

Ctrl-C (or SIGTERM) stops them all: gateway first, then genservice (which drains its generations),
then demo-llm, then the embedded Postgres.
"""

from __future__ import annotations

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
from types import FrameType

from genservice.replies.database import postgres_url
from genservice.replies.settings import ConfigError, env_addr

log = logging.getLogger("stack")

STOP_SECONDS = 20


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
    for name, process in reversed(processes):
        if process.poll() is None:
            log.info("stopping %s", name)
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def run(env: Mapping[str, str]) -> int:
    gateway_addr = env_addr(env, "GATEWAY_ADDR", "127.0.0.1:8080")
    genservice_addr = env_addr(env, "GENSERVICE_ADDR", "127.0.0.1:50051")
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    processes: list[tuple[str, subprocess.Popen[bytes]]] = []
    with postgres_url(env.get("DATABASE_URL") or None) as url:
        child_env = {**env, "DATABASE_URL": url, "GENSERVICE_TARGET": genservice_addr}
        try:
            if not env.get("OPENAI_BASE_URL"):
                log.info("OPENAI_BASE_URL is unset: starting demo-llm, the offline demo model")
                processes.append(("demo-llm", _spawn("genservice.demo_llm", child_env)))
            processes.append(("genservice", _spawn("genservice.server", child_env)))
            page = f"http://{gateway_addr}/"
            announced = False
            while not stopping:
                exited = [(name, p.returncode) for name, p in processes if p.poll() is not None]
                if exited:
                    log.error("%s exited (code %s); stopping the rest", *exited[0])
                    return 1
                if "gateway" not in dict(processes) and _listening(genservice_addr):
                    # the gateway last, so that its first health checks find genservice up
                    processes.append(("gateway", _spawn("gateway.server", child_env)))
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
