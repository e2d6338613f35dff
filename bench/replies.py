"""Reply latency and cost at 1 to 1,000 concurrent streams, through the real processes.

    python -m bench.replies [--quick] [--streams 1,100,200,425,850,1000] [--out bench/results] [--peer]

Per stream the bench's own model writes 500 unique 4-character tokens at 50 tokens/s (open loop), and
three readers read the reply: the origin (POST /v1/replies on gateway A), a live follower (events on
gateway B, attached before the first token) and a late joiner (events on gateway B from offset 0,
opened after token 250). Per-token latency runs from the model's emission to a reader's receipt, on
the bench's one clock. Each level reports p50/p99/max per reader class, whether every text was exact,
the CPU and memory of every product process and of Postgres; then a bisection finds the largest
number of streams with every p99 under 100 ms. A bare client reading the model directly gives the
bench's own overhead, and one unpaced stream the throughput.

With --peer the same workload also runs, level by level right after ours, against the peer (bench/peer:
Vercel's resumable-stream with Redis, in one Node process that is both gateway A and gateway B): both
are measured on the same machine in the same run, so the machine's speed cancels out of the comparison.
Redis is REDIS_URL, else 127.0.0.1:6379; the peer's keys have a prefix of the run's own.

The product runs as its console scripts (`genservice`, `gateway`) with environment variables; Postgres is
DATABASE_URL when set, else an embedded one in a temporary directory. Output: a table on stdout,
<out>/replies.json, <out>/replies.png, and each process's log in <out>/logs/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import logging
import os
import resource
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.model_server import ModelServer
from bench.processes import (
    PeerSetup,
    ResourceMonitor,
    Watched,
    postgres_url,
    postmaster_pid,
    prepare_peer,
    running_peer,
    running_product,
)
from bench.report import (
    BaselineResult,
    LevelResult,
    ThroughputResult,
    baseline_table,
    comparison_table,
    failures_text,
    level_table,
    plot,
    throughput_lines,
    write_json,
)
from bench.workload import Address, Runner, Workload

log = logging.getLogger("bench.replies")

CORES = os.cpu_count() or 1
DEFAULT_STREAMS = (1, 100, 200, 425, 850, 1000)
QUICK_STREAMS = (1, 100)
THRESHOLD_MS = 100.0
# a full run must end within 10 minutes, a quick one within 2 (with --peer, twice that): extra runs are skipped past
# these budgets
FULL_BUDGET_SECONDS = 540.0
QUICK_BUDGET_SECONDS = 110.0
WARMUP_STREAMS = 2
WARMUP_TOKENS = 20


def _streams(value: str) -> list[int]:
    try:
        counts = sorted({int(part) for part in value.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {value!r}") from None
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError("stream counts must be 1 or more")
    return counts


def _env_item(value: str) -> tuple[str, str]:
    key, sep, item = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {value!r}")
    return key, item


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.replies",
        description="Reply latency per reader class, CPU and memory of the product, at 1 to 1,000 streams.",
    )
    parser.add_argument("--quick", action="store_true", help="1 and 100 streams only, no search (under 2 minutes)")
    parser.add_argument("--streams", type=_streams, help="stream counts, comma-separated (default 1,100,...,1000)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"), help="output directory")
    # as many processes as `make run` starts: a genservice per core, and a gateway per core split over the two sides
    parser.add_argument(
        "--genservices", type=int, default=CORES, help=f"genservice processes (default: one per core, {CORES})"
    )
    parser.add_argument(
        "--gateways-per-side",
        type=int,
        default=max(1, CORES // 2),
        help=f"gateways on each side, A and B (default: half the cores, {max(1, CORES // 2)})",
    )
    parser.add_argument("--tokens", type=int, default=500, help="tokens per stream (default 500)")
    parser.add_argument("--rate", type=float, default=50.0, help="tokens per second per stream (default 50)")
    parser.add_argument("--ramp", type=float, default=1.0, help="stream starts spread over this many seconds")
    parser.add_argument("--tail", type=float, help="seconds a level waits past its last due token (30; quick 20)")
    parser.add_argument("--search-runs", type=int, help="extra runs of the bisection (3; quick 0)")
    parser.add_argument("--unpaced-tokens", type=int, default=20_000, help="tokens of the unpaced stream")
    parser.add_argument("--no-baseline", action="store_true", help="skip the bare-client baseline")
    parser.add_argument(
        "--peer",
        action="store_true",
        help="also run every level against the peer, resumable-stream + Redis in one Node process (bench/peer)",
    )
    parser.add_argument(
        "--env", type=_env_item, action="append", default=[], metavar="KEY=VALUE", help="extra product environment"
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    if args.genservices < 1 or args.gateways_per_side < 1:
        parser.error("--genservices and --gateways-per-side must be 1 or more")
    if args.tokens < 2 or args.rate <= 0 or args.unpaced_tokens < 1:
        parser.error("--tokens must be 2 or more, --rate and --unpaced-tokens positive")
    if args.streams is None:
        args.streams = list(QUICK_STREAMS if args.quick else DEFAULT_STREAMS)
    if args.tail is None:
        args.tail = 20.0 if args.quick else 30.0
    if args.search_runs is None:
        args.search_runs = 0 if args.quick else 3
    return args


@dataclass
class Search:
    largest_passing: int
    smallest_failing: int | None
    runs: list[int]


@dataclass
class System:
    """One product under measurement: the gateways of its two sides, the processes that are its cost, its results."""

    name: str
    label: str  # in "origin via <label>"
    what: str = ""
    side_a: list[Address] = field(default_factory=list)
    side_b: list[Address] = field(default_factory=list)
    watched: list[Watched] = field(default_factory=list)
    levels: list[LevelResult] = field(default_factory=list)
    throughput: list[ThroughputResult] = field(default_factory=list)
    search: Search | None = None

    @property
    def names(self) -> list[str]:
        return [each.name for each in self.watched]


def _raise_open_files_limit() -> None:
    """Thousands of connections: the bench (and the product, which inherits it) needs many descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _describe(level: LevelResult) -> str:
    latency = " ".join(f"{name} {level.latency_ms[name].triple()}" for name in level.latency_ms)
    cpu = " ".join(f"{name} {value:.0f}%" for name, value in level.cpu_percent.items())
    exact = "exact" if level.exact else f"NOT exact ({level.exact_streams}/{level.streams})"
    return (
        f"{level.streams} streams: {latency} ms; {exact}; CPU {cpu}; at most {level.model_peak_streams} model streams"
        f" at once; {level.wall_seconds:.1f}s"
    )


class Bench:
    def __init__(self, args: argparse.Namespace, database_url: str, started: float, peer: PeerSetup | None) -> None:
        self.args = args
        self.database_url = database_url
        self.started = started
        self.peer_setup = peer
        self.ours = System("ours", "the product")
        self.peer = None if peer is None else System("peer", "the peer", peer.description)
        self.systems = [self.ours] if self.peer is None else [self.ours, self.peer]
        self.budget = (QUICK_BUDGET_SECONDS if args.quick else FULL_BUDGET_SECONDS) * len(self.systems)
        self.workload = Workload(tokens=args.tokens, rate=args.rate, ramp=args.ramp, tail=args.tail)
        self.baselines: list[BaselineResult] = []

    @property
    def levels(self) -> list[LevelResult]:
        return self.ours.levels

    def remaining(self) -> float:
        return self.budget - (time.monotonic() - self.started)

    @contextlib.asynccontextmanager
    async def _running_peer(self, model: ModelServer, run_id: str) -> AsyncIterator[None]:
        if self.peer is None or self.peer_setup is None:
            yield
            return
        async with running_peer(
            self.peer_setup,
            model_base_url=model.base_url,
            key_prefix=f"bench-peer-{run_id}",
            log_dir=self.args.out / "logs",
        ) as process:
            # one process is both gateways, as the peer is deployed in its own benchmark
            self.peer.side_a = self.peer.side_b = [(process.host, process.port)]
            self.peer.watched = [Watched("node", process.pid)]
            if self.peer_setup.redis_pid is not None:
                self.peer.watched.append(Watched("redis", self.peer_setup.redis_pid))
            yield

    async def run(self) -> None:
        args = self.args
        model = ModelServer()
        await model.start()
        log.info("model server on %s", model.base_url)
        pg_pid = await asyncio.to_thread(postmaster_pid, self.database_url)
        run_id = uuid.uuid4().hex[:8]
        try:
            async with (
                running_product(
                    database_url=self.database_url,
                    model_base_url=model.base_url,
                    genservices=args.genservices,
                    gateways_per_side=args.gateways_per_side,
                    log_dir=args.out / "logs",
                    extra_env=dict(args.env),
                ) as product,
                self._running_peer(model, run_id),
            ):
                ours = self.ours
                ours.watched = [Watched(process.name, process.pid) for process in product.processes]
                if pg_pid is not None:
                    ours.watched.append(Watched("postgres", pg_pid, tree_memory=True))
                else:
                    log.warning("Postgres does not run on this machine: its CPU and memory are not measured")
                ours.side_a = [(each.host, each.port) for each in product.gateways_a]
                ours.side_b = [(each.host, each.port) for each in product.gateways_b]
                runner = Runner(model, run_id, self.workload)
                monitors = {system.name: ResourceMonitor(system.watched) for system in self.systems}

                async def level(system: System, streams: int, purpose: str, tokens: int | None = None) -> LevelResult:
                    gc.collect()
                    gc.freeze()
                    result = await runner.product_level(
                        streams, system.side_a, system.side_b, monitors[system.name], system.names, purpose, tokens
                    )
                    if purpose == "warm-up":
                        if not result.exact:
                            log.warning("%s: the warm-up was not exact: %s", system.name, result.examples[:2])
                    else:
                        log.info("%s, %s", system.name, _describe(result))
                        system.levels.append(result)
                    await runner.settle()
                    return result

                for system in self.systems:
                    log.info("warm-up of %s: %d streams of %d tokens", system.name, WARMUP_STREAMS, WARMUP_TOKENS)
                    await level(system, WARMUP_STREAMS, "warm-up", WARMUP_TOKENS)
                # the baseline first, while the product is idle: no level's leftovers compete with it
                for streams in [] if args.no_baseline else args.streams:
                    gc.collect()
                    gc.freeze()
                    baseline = await runner.baseline_level(streams)
                    log.info("bare client at %d streams: %s ms", streams, baseline.latency_ms.triple())
                    self.baselines.append(baseline)
                for streams in args.streams:
                    for system in self.systems:
                        await level(system, streams, "level")
                for system in self.systems:
                    system.search = await self._search(system, functools.partial(level, system))
                for system, gateway in [*((each, each.side_a[0]) for each in self.systems), (self.ours, None)]:
                    timeout = max(10.0, min(60.0, self.remaining()))
                    result = await runner.unpaced(args.unpaced_tokens, gateway, timeout, system.label)
                    log.info("unpaced, %s: %.0f chars/s", result.reader, result.chars_per_second)
                    system.throughput.append(result)
        finally:
            await model.close()

    async def _search(self, system: System, level: Callable[[int, str], Awaitable[LevelResult]]) -> Search:
        passing = {each.streams: each.passes(THRESHOLD_MS) for each in system.levels}
        failing = sorted(streams for streams, ok in passing.items() if not ok)
        if not failing:
            return Search(max(passing, default=0), None, [])
        high = failing[0]
        low = max((streams for streams, ok in passing.items() if ok and streams < high), default=0)
        runs: list[int] = []
        for _ in range(self.args.search_runs):
            middle = (low + high) // 2
            if middle <= low or middle >= high:
                break
            if self.remaining() < self.workload.level_seconds() + 30:
                log.warning("no time left in the budget for another search run")
                break
            log.info("search of %s: %d streams (passing %d, failing %d)", system.name, middle, low, high)
            result = await level(middle, "search")
            runs.append(middle)
            if result.passes(THRESHOLD_MS):
                low = middle
            else:
                high = middle
        return Search(low, high, runs)

    def document(self, total_seconds: float) -> dict[str, Any]:
        work = self.workload
        ours = self.ours
        document: dict[str, Any] = {
            "bench": "replies",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "total_seconds": total_seconds,
            "workload": {
                "tokens_per_stream": work.tokens,
                "chars_per_token": 4,
                "tokens_per_second": work.rate,
                "ramp_seconds": work.ramp,
                "tail_seconds": work.tail,
                "late_joiner_after_tokens": work.tokens // 2,
                "latency": "model emission to reader receipt per token (its last character); the late joiner "
                "from the later of emission and its opening",
                "threshold_ms": THRESHOLD_MS,
            },
            "processes": {
                "genservices": self.args.genservices,
                "gateways_per_side": self.args.gateways_per_side,
                "watched": ours.names,
                "extra_env": dict(self.args.env),
            },
            "levels": ours.levels,
            "baseline": self.baselines,
            "search": None if ours.search is None else vars(ours.search),
            "unpaced": ours.throughput,
        }
        if self.peer is not None:
            peer = self.peer
            document["peer"] = {
                "what": peer.what,
                "watched": peer.names,
                "levels": peer.levels,
                "search": None if peer.search is None else vars(peer.search),
                "unpaced": peer.throughput,
            }
        return document

    def _of(self, system: System) -> str:
        """Which system a line is about, when there are two."""
        return "" if self.peer is None else f" ({system.name})"

    def text(self, total_seconds: float, plotted: Path | None) -> str:
        ours = self.ours
        parts = [
            "\nReplies through the product: per-token latency (ms) by reader; CPU % of one core; RSS max "
            "(Postgres: PSS of all its processes); * = a search run\n",
            level_table(ours.levels, [*ours.names, "bench"]),
        ]
        if self.peer is not None:
            peer = self.peer
            parts.append(f"\nReplies through the peer, {peer.what}, measured in the same run: the same columns\n")
            parts.append(level_table(peer.levels, [*peer.names, "bench"]))
            parts.append("\nSide by side: CPU % of the system's own processes (not the bench's)\n")
            parts.append(comparison_table([(each.name, each.levels, each.names) for each in self.systems]))
        for system in self.systems:
            failures = failures_text(system.levels)
            if failures:
                parts.append(f"\nWhat was not exact{self._of(system)}:\n" + failures)
        if self.baselines:
            parts.append("\nBaseline: a bare client reading the model server directly (the bench's own overhead)\n")
            parts.append(baseline_table(self.baselines))
        for system in self.systems:
            if system.search is not None:
                search = system.search
                if search.smallest_failing is None:
                    verdict = f"every level passed; the largest run was {search.largest_passing} streams"
                else:
                    verdict = (
                        f"largest passing {search.largest_passing} streams, smallest failing {search.smallest_failing}"
                        f" (search runs: {', '.join(map(str, search.runs)) or 'none'})"
                    )
                parts.append(
                    f"\nSearch{self._of(system)}, every reader's p99 < {THRESHOLD_MS:g} ms and every text exact:"
                    f" {verdict}\n"
                )
        throughput = [each for system in self.systems for each in system.throughput]
        if throughput:
            parts.append("\n" + throughput_lines(throughput))
        for system in self.systems:
            release = sum(level.release_timeouts for level in system.levels)
            if release:
                parts.append(
                    f"\n{release} streams{self._of(system)} started without their follower attached"
                    " (release timed out)\n"
                )
        parts.append(f"\nJSON: {self.args.out / 'replies.json'}\n")
        if plotted is not None:
            parts.append(f"plot: {plotted}\n")
        parts.append(f"logs: {self.args.out / 'logs'}\ntotal time: {total_seconds:.0f} s\n")
        return "".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    _raise_open_files_limit()
    gc.set_threshold(20_000, 20, 20)
    failed = False
    peer = None
    if args.peer:
        try:
            peer = prepare_peer()
        except RuntimeError as exc:
            log.error("%s", exc)
            return 2
    with postgres_url(None) as database_url:
        bench = Bench(args, database_url, started, peer)
        try:
            asyncio.run(bench.run())
        except KeyboardInterrupt:
            log.warning("interrupted: reporting what was measured")
        except RuntimeError as exc:  # a product process that did not start or exited
            log.error("the bench stopped: %s", exc)
            failed = True
    total = time.monotonic() - started
    write_json(args.out / "replies.json", bench.document(total))
    png = args.out / "replies.png"
    plotted = png if bench.levels and plot(png, bench.levels, bench.baselines, THRESHOLD_MS) else None
    sys.stdout.write(bench.text(total, plotted))
    sys.stdout.flush()
    exact = all(level.exact for level in bench.levels) and all(each.exact for each in bench.ours.throughput)
    # 1 when any reader's text, or any finished message, was not the model's text; 2 when the bench could not run.
    # The peer's exactness is what it measured of the peer, reported in the table: it does not fail the bench.
    if failed or not bench.levels:
        return 2
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
