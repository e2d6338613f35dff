"""The product's processes, started as their console scripts with environment variables; the peer; Postgres; /proc
sampling.

Every product process leads a process group of its own, logs to a file, and is ended (SIGTERM, then
SIGKILL of the group) when the bench leaves. Postgres is DATABASE_URL when set, else an embedded server
(the `pgserver` package) in a temporary directory, stopped and removed at the end. The peer (bench/peer)
is one Node process, started and ended the same way, on the Redis of REDIS_URL (default the local one).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
HEALTH_TIMEOUT_SECONDS = 60.0
TERM_GRACE_SECONDS = 5.0
# environment the product must not inherit from the caller's shell: it would change what is measured
_SCRUBBED = ("GATEWAY_JWT_SECRET", "GENSERVICE_TOKEN", "OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_MODEL")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def console_script(name: str) -> Path:
    """The venv's console script `name`, beside the running interpreter."""
    path = Path(sys.executable).parent / name
    found = path if path.exists() else shutil.which(name)
    if found is None:
        raise RuntimeError(f"no console script {name!r} beside {sys.executable} or on PATH")
    return Path(found)


@dataclass
class ProductProcess:
    name: str
    popen: subprocess.Popen[bytes]
    host: str
    port: int
    log_path: Path

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Product:
    genservices: list[ProductProcess] = field(default_factory=list)
    gateways_a: list[ProductProcess] = field(default_factory=list)
    gateways_b: list[ProductProcess] = field(default_factory=list)

    @property
    def processes(self) -> list[ProductProcess]:
        return [*self.genservices, *self.gateways_a, *self.gateways_b]


def _spawn(
    name: str, argv: Sequence[str], env: Mapping[str, str], log_dir: Path, host: str, port: int
) -> ProductProcess:
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as output:
        popen = subprocess.Popen(
            list(argv),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    log.info("started %s (pid %d) on %s:%d, log %s", name, popen.pid, host, port, log_path)
    return ProductProcess(name, popen, host, port, log_path)


async def http_status(host: str, port: int, path: str, timeout: float = 3.0) -> int:
    """The status of a plain GET, 0 when there is no answer."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
                line = await reader.readline()
            finally:
                writer.close()
        return int(line.split()[1])
    except (OSError, TimeoutError, IndexError, ValueError):
        return 0


async def _until_healthy(process: ProductProcess, others: list[ProductProcess]) -> None:
    deadline = time.monotonic() + HEALTH_TIMEOUT_SECONDS
    while await http_status(process.host, process.port, "/healthz") != 200:
        for each in [process, *others]:
            if each.popen.poll() is not None:
                raise RuntimeError(f"{each.name} exited with {each.popen.returncode}:\n{each.log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{process.name} not healthy after {HEALTH_TIMEOUT_SECONDS:g}s:\n{process.log_tail()}")
        await asyncio.sleep(0.2)


def stop(processes: list[ProductProcess]) -> None:
    """SIGTERM each process group, wait a little, then SIGKILL the groups: nothing is left behind."""
    for process in processes:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + TERM_GRACE_SECONDS
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.popen.wait(max(0.0, deadline - time.monotonic()))
    for process in processes:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.popen.wait(5)


@contextlib.asynccontextmanager
async def running_product(
    *,
    database_url: str,
    model_base_url: str,
    genservices: int,
    gateways_per_side: int,
    log_dir: Path,
    extra_env: Mapping[str, str],
) -> AsyncIterator[Product]:
    """genservice(s) and two sides of gateways, all answering /healthz; stopped on the way out."""
    log_dir.mkdir(parents=True, exist_ok=True)
    base = {key: value for key, value in os.environ.items() if key not in _SCRUBBED}
    base.update(
        {
            "DATABASE_URL": database_url,
            "OPENAI_BASE_URL": model_base_url,
            "OPENAI_MODEL": "bench",
            "OPENAI_API_KEY": "bench",
            # every stream of the bench is the one development-mode user: no per-user cap on running replies
            "MAX_ACTIVE_REPLIES_PER_USER": "0",
            "SHUTDOWN_GRACE_SECONDS": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    base.update(extra_env)
    product = Product()
    try:
        for index in range(genservices):
            port = free_port()
            env = {**base, "GENSERVICE_ADDR": f"127.0.0.1:{port}"}
            product.genservices.append(
                _spawn(f"genservice-{index}", [str(console_script("genservice"))], env, log_dir, "127.0.0.1", port)
            )
        # every gateway spreads its calls over every genservice, as under `make run`
        target = ",".join(genservice.addr for genservice in product.genservices)
        for side, gateways in (("a", product.gateways_a), ("b", product.gateways_b)):
            for index in range(gateways_per_side):
                port = free_port()
                name = f"gateway-{side}{index}"
                env = {**base, "GATEWAY_ADDR": f"127.0.0.1:{port}", "GENSERVICE_TARGET": target, "GATEWAY_NAME": name}
                gateways.append(_spawn(name, [str(console_script("gateway"))], env, log_dir, "127.0.0.1", port))
        for gateway in [*product.gateways_a, *product.gateways_b]:
            await _until_healthy(gateway, product.processes)
        yield product
    finally:
        stop(product.processes)


# the peer: resumable-stream with Redis in one Node process (bench/peer)

PEER_DIR = Path(__file__).parent / "peer"
REDIS_URL = "redis://127.0.0.1:6379"


@dataclass
class PeerSetup:
    node: str
    redis_url: str
    # the local redis-server's pid, None when Redis runs elsewhere
    redis_pid: int | None
    # the installed resumable-stream's version
    version: str

    @property
    def description(self) -> str:
        return f"resumable-stream {self.version} with Redis ({self.redis_url}) in one Node process for both sides"


def _redis_answers(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=3.0) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _pid_named(name: str) -> int | None:
    """The oldest live process whose command is `name`, as `pgrep -o -x` finds it."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                comm = Path(f"/proc/{entry}/comm").read_text().strip()
            except OSError:
                continue
            if comm == name:
                pids.append(int(entry))
    return min(pids) if pids else None


def prepare_peer() -> PeerSetup:
    """Node, the peer's node_modules (`npm ci` when absent) and a Redis that answers; else RuntimeError says why."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise RuntimeError("--peer needs Node.js 20+ and npm on PATH (Debian: apt-get install nodejs npm)")
    lock = PEER_DIR / "package-lock.json"
    installed = PEER_DIR / "node_modules" / ".package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        log.info("installing the peer's packages: npm ci --prefix %s", PEER_DIR)
        done = subprocess.run(
            [npm, "ci", "--prefix", str(PEER_DIR), "--no-audit", "--no-fund"],
            stdout=sys.stderr,
            stderr=subprocess.STDOUT,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"npm ci --prefix {PEER_DIR} failed with {done.returncode}")
    url = os.environ.get("REDIS_URL", REDIS_URL)
    if not _redis_answers(url):
        raise RuntimeError(f"--peer needs a Redis server: none answers PING at {url} (set REDIS_URL)")
    pid = _pid_named("redis-server")
    if pid is None:
        log.warning("redis-server does not run on this machine: its CPU and memory are not measured")
    package = json.loads((PEER_DIR / "node_modules" / "resumable-stream" / "package.json").read_text())
    return PeerSetup(node, url, pid, str(package["version"]))


@contextlib.asynccontextmanager
async def running_peer(
    setup: PeerSetup, *, model_base_url: str, key_prefix: str, log_dir: Path
) -> AsyncIterator[ProductProcess]:
    """The peer's Node process answering /healthz; its Redis keys all start with key_prefix. Stopped on the way out."""
    log_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {
        **os.environ,
        "MODEL_BASE_URL": model_base_url,
        "REDIS_URL": setup.redis_url,
        "KEY_PREFIX": key_prefix,
        "PORT": str(port),
    }
    peer = _spawn("peer-node", [setup.node, str(PEER_DIR / "server.mjs")], env, log_dir, "127.0.0.1", port)
    try:
        await _until_healthy(peer, [])
        yield peer
    finally:
        stop([peer])


# Postgres


@contextlib.contextmanager
def postgres_url(work_dir: Path | None = None) -> Iterator[str]:
    """A fresh database on DATABASE_URL's server when set (dropped after); else an embedded Postgres in a temporary
    directory, stopped and removed after."""
    url = os.environ.get("DATABASE_URL")
    if url:
        with _fresh_database(url) as fresh:
            yield fresh
        return
    from pgserver.postgres_server import get_server  # the embedded Postgres, a PyPI package

    data_dir = Path(tempfile.mkdtemp(prefix="bench-pg-", dir=work_dir))
    with _stdout_to_stderr():
        server = get_server(data_dir, cleanup_mode="stop")
    try:
        yield str(server.get_uri())
    finally:
        with _stdout_to_stderr():
            server.cleanup()
        shutil.rmtree(data_dir, ignore_errors=True)


@contextlib.contextmanager
def _fresh_database(url: str) -> Iterator[str]:
    """A database of this run's own on the server of `url`, dropped after; `url` itself when none can be made."""
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    name = f"bench_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.Error as exc:
        log.warning("no database of the bench's own (%s): using DATABASE_URL as it is", exc)
        yield url
        return
    log.info("database %s created for this run", name)
    try:
        yield make_conninfo(url, dbname=name)
    finally:
        try:
            with psycopg.connect(url, autocommit=True) as admin:
                admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        except psycopg.Error as exc:
            log.warning("could not drop the database %s: %s", name, exc)


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """initdb and pg_ctl print to the inherited stdout; the bench keeps stdout for its report."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def postmaster_pid(database_url: str) -> int | None:
    """The postmaster's pid when Postgres runs on this machine (the parent of our backend), else None."""
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
    if row is None:
        return None
    stat = _read_stat(int(row[0]))
    return stat[0] if stat is not None else None


# /proc sampling


def _read_stat(pid: int) -> tuple[int, int, int] | None:
    """(ppid, own CPU ticks, reaped children's CPU ticks) of a live process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            raw = file.read()
    except OSError:
        return None
    fields = raw[raw.rindex(b")") + 2 :].split()
    return int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])


def _process_table() -> dict[int, tuple[int, int, int]]:
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _read_stat(int(entry))
            if stat is not None:
                table[int(entry)] = stat
    return table


def _tree(root: int, table: dict[int, tuple[int, int, int]]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            found.append(pid)
            todo.extend(children.get(pid, ()))
    return found


def _status_kib(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as file:
            for line in file:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as file:
            for line in file:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


@dataclass
class Watched:
    """A process tree to measure: CPU of the root, its live descendants and their reaped children."""

    name: str
    pid: int
    # True: memory as the sum of the tree's PSS (Postgres: shared buffers counted once); False: the root's VmRSS
    tree_memory: bool = False


@dataclass
class Usage:
    cpu_percent: dict[str, float]
    cpu_seconds: dict[str, float]
    rss_mib: dict[str, float]


class ResourceMonitor:
    """CPU over an interval (start/stop) as % of one core, and the largest memory seen meanwhile (1 Hz)."""

    def __init__(self, watched: list[Watched], interval: float = 1.0) -> None:
        self._watched = watched
        self._interval = interval
        self._start_cpu: dict[str, float] = {}
        self._start_time = 0.0
        self._start_self = 0.0
        self._rss: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    def _cpu(self) -> dict[str, float]:
        table = _process_table()
        cpu = {}
        for each in self._watched:
            ticks = sum(table[pid][1] + table[pid][2] for pid in _tree(each.pid, table))
            cpu[each.name] = ticks / CLOCK_TICKS
        return cpu

    def _sample_memory(self) -> None:
        table = _process_table() if any(each.tree_memory for each in self._watched) else {}
        for each in self._watched:
            if each.tree_memory:
                kib = sum(_pss_kib(pid) for pid in _tree(each.pid, table))
            else:
                kib = _status_kib(each.pid, "VmRSS:")
            self._rss[each.name] = max(self._rss.get(each.name, 0.0), kib / 1024)
        self._rss["bench"] = max(self._rss.get("bench", 0.0), _status_kib(os.getpid(), "VmRSS:") / 1024)

    async def _sampler(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self._sample_memory()

    def start(self) -> None:
        self._rss = {}
        self._start_cpu = self._cpu()
        self._start_time = time.monotonic()
        times = os.times()
        self._start_self = times.user + times.system
        self._sample_memory()
        self._task = asyncio.get_running_loop().create_task(self._sampler())

    async def stop(self) -> Usage:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._sample_memory()
        wall = max(time.monotonic() - self._start_time, 1e-9)
        end = self._cpu()
        seconds = {name: end[name] - start for name, start in self._start_cpu.items() if name in end}
        times = os.times()
        seconds["bench"] = times.user + times.system - self._start_self
        return Usage(
            cpu_percent={name: 100 * value / wall for name, value in seconds.items()},
            cpu_seconds=seconds,
            rss_mib=dict(self._rss),
        )
