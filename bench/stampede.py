"""The resume stampede (`make bench`): every tab reconnecting at once, as after a gateway restart.

    python -m bench.stampede [--readers 1000] [--live 100] [--finished 400]

The product starts as `make run` would. Replies are made first through gateway A: `--finished` run
to their end, `--live` paced (50 tokens/s) and left running with no one reading them, as when their
tabs went away. Then `--readers` readers attach to gateway B at once, reader i to message i modulo
the messages, each with a `Last-Event-ID` at a token boundary it could have seen. Reported: the
responses by status, the time from the stampede's start to each reader's first data (a delta, or
`finished` for a reader that had everything), whether every reader got exactly the text after its
offset and `finished` COMPLETE with the whole text, and how many Postgres checkouts gateway B made
for them (gateway_db_checkouts). The target: no 5xx, first data p99 under 2 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.model_server import TOKEN_CHARS, ModelServer, StreamPlan, stream_content
from bench.processes import ProductProcess, postgres_url, running_product
from bench.replies import CORES
from bench.report import Percentiles
from bench.sse_reader import ReplyReader, get_request, post_request

log = logging.getLogger(__name__)

TARGET_FIRST_DATA_P99_S = 2.0
# finished replies are made this many at a time: below the gateway's bound on pending starts
_MAKING_AT_ONCE = 32
_LIVE_RATE = 50.0


@dataclass
class StampedeResult:
    readers: int
    live: int
    finished: int
    statuses: dict[str, int]
    exact: int
    problems: dict[str, int]
    examples: list[str]
    first_data_ms: Percentiles
    db_checkouts: float
    db_checkout_waits: float
    seconds: float

    @property
    def passes(self) -> bool:
        no_5xx = not any(status.startswith("5") for status in self.statuses)
        return no_5xx and self.exact == self.readers and self.first_data_ms.p99 < TARGET_FIRST_DATA_P99_S * 1000


def _plan(model: ModelServer, key: str, tokens: int, interval: float) -> StreamPlan:
    plan = StreamPlan(key=key, tokens=model.take_tokens(tokens), interval=interval)
    model.register(plan)
    return plan


async def _finished_reply(model: ModelServer, gateway: ProductProcess, key: str, tokens: int) -> tuple[StreamPlan, str]:
    plan = _plan(model, key, tokens, 0.0)
    origin = ReplyReader(
        post_request(gateway.host, gateway.port, "/v1/replies", {"content": stream_content(key)}), tokens, TOKEN_CHARS
    )
    await origin.open(gateway.host, gateway.port)
    await origin.closed
    if origin.message_id is None or origin.finished is None or origin.finished.get("status") != "complete":
        raise RuntimeError(f"a finished reply could not be made: {origin.problems[:2]}")
    return plan, origin.message_id


async def _live_reply(
    model: ModelServer, gateway: ProductProcess, key: str, tokens: int, started: asyncio.Queue[tuple[StreamPlan, str]]
) -> None:
    """Start a paced reply and leave it running: its origin goes away once it has the message id."""
    plan = _plan(model, key, tokens, 1.0 / _LIVE_RATE)
    origin: ReplyReader

    def on_started(reader: ReplyReader) -> None:
        assert reader.message_id is not None
        started.put_nowait((plan, reader.message_id))
        reader.close()

    origin = ReplyReader(
        post_request(gateway.host, gateway.port, "/v1/replies", {"content": stream_content(key)}),
        tokens,
        TOKEN_CHARS,
        on_started=on_started,
    )
    await origin.open(gateway.host, gateway.port)
    await origin.closed
    if origin.message_id is None:
        raise RuntimeError(f"a live reply could not be started: {origin.problems[:2]}")


async def _metric(gateway: ProductProcess, name: str) -> float:
    reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
    try:
        writer.write(f"GET /metrics HTTP/1.1\r\nHost: {gateway.addr}\r\nConnection: close\r\n\r\n".encode())
        body = (await reader.read()).decode()
    finally:
        writer.close()
    for line in body.splitlines():
        if line.startswith(f"{name}_total "):
            return float(line.split()[1])
    raise RuntimeError(f"gateway {gateway.name} has no metric {name}")


def _reader_problems(reader: ReplyReader, plan: StreamPlan) -> list[str]:
    if reader.status != 200:
        return [f"HTTP {reader.status or 'none'}", *reader.problems[:1]]
    problems = list(reader.problems)
    if reader.received.text != plan.text[reader.offset :]:
        problems.append(f"text after offset {reader.offset} differs ({reader.received.length} chars)")
    finished = reader.finished or {}
    if finished.get("status") != "complete" or finished.get("content") != plan.text:
        problems.append(f"finished {finished.get('status')} with {len(finished.get('content') or '')} chars")
    return problems


async def run(args: argparse.Namespace, database_url: str) -> StampedeResult:
    model = ModelServer()
    await model.start()
    try:
        async with running_product(
            database_url=database_url,
            model_base_url=model.base_url,
            genservices=args.genservices,
            gateways_per_side=1,
            log_dir=args.out / "logs",
            extra_env={},
        ) as product:
            side_a, side_b = product.gateways_a[0], product.gateways_b[0]
            messages: list[tuple[StreamPlan, str]] = []
            for first in range(0, args.finished, _MAKING_AT_ONCE):
                batch = range(first, min(first + _MAKING_AT_ONCE, args.finished))
                made = [_finished_reply(model, side_a, f"done.{i}", args.tokens) for i in batch]
                messages.extend(await asyncio.gather(*made))
            log.info("%d finished replies made", len(messages))
            started: asyncio.Queue[tuple[StreamPlan, str]] = asyncio.Queue()
            live_tokens = args.tokens * 2  # long enough to run through the stampede
            origins: list[asyncio.Task[None]] = []
            for first in range(0, args.live, _MAKING_AT_ONCE):
                batch = range(first, min(first + _MAKING_AT_ONCE, args.live))
                origins.extend(
                    asyncio.create_task(_live_reply(model, side_a, f"live.{i}", live_tokens, started)) for i in batch
                )
                async with asyncio.timeout(args.timeout):
                    for _ in batch:
                        messages.append(await started.get())
            # every live reply has text before the tabs come back
            while any(plan.emitted < _LIVE_RATE for plan, _ in messages[args.finished :]):
                await asyncio.sleep(0.1)
            log.info("%d live replies running", args.live)
            checkouts = await _metric(side_b, "gateway_db_checkouts")
            waits = await _metric(side_b, "gateway_db_checkout_waits")
            chooser = random.Random(args.seed)
            readers: list[tuple[ReplyReader, StreamPlan]] = []
            for index in range(args.readers):
                plan, message_id = messages[index % len(messages)]
                seen_tokens = chooser.randint(0, plan.emitted)
                offset = seen_tokens * TOKEN_CHARS
                request = get_request(
                    side_b.host, side_b.port, f"/v1/messages/{message_id}/events", last_event_id=str(offset)
                )
                reader = ReplyReader(request, len(plan.tokens) - seen_tokens, TOKEN_CHARS, offset=offset)
                readers.append((reader, plan))
            began = time.monotonic()
            await asyncio.gather(*(reader.open(side_b.host, side_b.port) for reader, _ in readers))
            async with asyncio.timeout(args.timeout):
                await asyncio.gather(*(reader.closed for reader, _ in readers))
            seconds = time.monotonic() - began
            checkouts = await _metric(side_b, "gateway_db_checkouts") - checkouts
            waits = await _metric(side_b, "gateway_db_checkout_waits") - waits
            await asyncio.gather(*origins)
    finally:
        await model.close()
    statuses: Counter[str] = Counter()
    problems: Counter[str] = Counter()
    examples: list[str] = []
    first_data: list[float] = []
    exact = 0
    for reader, plan in readers:
        statuses[str(reader.status or "none")] += 1
        # a reader that had the whole text gets only `finished`
        first_at = reader.received.first_at if reader.received.length else reader.finished_at
        if not math.isnan(first_at):
            first_data.append((first_at - began) * 1000)
        found = _reader_problems(reader, plan)
        if not found:
            exact += 1
        for problem in found:
            problems[problem.split(" (")[0]] += 1
        if found and len(examples) < 5:
            examples.append(f"{plan.key} from {reader.offset}: {'; '.join(found[:3])}")
    return StampedeResult(
        readers=args.readers,
        live=args.live,
        finished=args.finished,
        statuses=dict(statuses),
        exact=exact,
        problems=dict(problems),
        examples=examples,
        first_data_ms=Percentiles.of(first_data),
        db_checkouts=checkouts,
        db_checkout_waits=waits,
        seconds=seconds,
    )


def report(result: StampedeResult) -> str:
    first = result.first_data_ms
    statuses = ", ".join(f"{count} x {status}" for status, count in sorted(result.statuses.items()))
    lines = [
        f"Resume stampede: {result.readers} readers at once on one gateway, over {result.finished} finished"
        f" and {result.live} live replies",
        f"  responses: {statuses}",
        f"  exact (text after its offset, finished COMPLETE): {result.exact}/{result.readers}",
        f"  first data after the stampede began: p50 {first.p50:.0f} ms, p99 {first.p99:.0f} ms,"
        f" max {first.max:.0f} ms (target p99 < {TARGET_FIRST_DATA_P99_S * 1000:.0f} ms)",
        f"  Postgres checkouts on that gateway: {result.db_checkouts:.0f}"
        f" ({result.db_checkout_waits:.0f} waited for a connection)",
        f"  every reader done in {result.seconds:.1f} s: {'PASS' if result.passes else 'FAIL'}",
    ]
    lines.extend(f"  problem: {count} x {problem}" for problem, count in sorted(result.problems.items()))
    lines.extend(f"  e.g. {example}" for example in result.examples)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stampede", description=__doc__.splitlines()[0])
    parser.add_argument("--readers", type=int, default=1000)
    parser.add_argument("--live", type=int, default=100, help="replies still running when the readers come")
    parser.add_argument("--finished", type=int, default=400, help="replies already ended")
    parser.add_argument("--tokens", type=int, default=500, help="tokens of a finished reply (a live one: twice that)")
    parser.add_argument("--genservices", type=int, default=CORES)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds every reader has to finish")
    parser.add_argument("--out", type=Path, default=None, help="output directory (JSON and logs)")
    args = parser.parse_args(argv)
    if args.live + args.finished < 1 or args.readers < 1:
        parser.error("--readers and --live + --finished must be 1 or more")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.out = args.out or Path(tempfile.mkdtemp(prefix="bench-stampede-"))
    with postgres_url(None) as database_url:
        result = asyncio.run(run(args, database_url))
    sys.stdout.write(report(result) + "\n")
    out = args.out / "stampede.json"
    out.write_text(json.dumps(asdict(result), indent=2))
    sys.stdout.write(f"JSON: {out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
