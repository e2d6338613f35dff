"""The replies workload: streams of paced tokens read by an origin, a live follower and a late joiner.

Per stream the bench registers a plan with its model, then POSTs the reply on a gateway of side A (the
origin). The origin's `started` gives the message id; the live follower attaches on side B, and its own
`started` releases the model's schedule, so it is attached before the first token. When the model has
emitted half of the tokens, the late joiner opens on side B from offset 0. Latency is attributed per
token: from its emission by the model to the arrival of the data holding its last character; for the late
joiner, from the later of the emission and the moment it opened.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import re
import time
from collections import Counter
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from bench.model_server import TOKEN_CHARS, ModelServer, StreamPlan, stream_content
from bench.processes import ResourceMonitor, Usage
from bench.report import READER_CLASSES, BaselineResult, LevelResult, Percentiles, ThroughputResult
from bench.sse_reader import ChatReader, ReplyReader, SseClient, get_request, post_request

log = logging.getLogger(__name__)

Address = tuple[str, int]
# how often a level looks whether every stream has settled
_POLL_SECONDS = 0.1
# after a level's deadline, how long cut connections get to close
_CUT_SECONDS = 1.0
_EXAMPLES = 5


@dataclass(frozen=True)
class Workload:
    tokens: int = 500
    rate: float = 50.0  # tokens per second per stream
    ramp: float = 1.0  # stream starts are spread over this many seconds
    tail: float = 30.0  # seconds a level waits past its last due token
    release_timeout: float = 5.0  # the model starts anyway if no follower attached by then

    @property
    def interval(self) -> float:
        return 1.0 / self.rate

    def level_seconds(self, tokens: int | None = None) -> float:
        """The longest a level may last: ramp, emission, tail."""
        return self.ramp + (tokens or self.tokens) / self.rate + self.tail


@dataclass(eq=False)
class _Stream:
    index: int
    plan: StreamPlan
    side_b: Address
    late_after: int
    origin: ReplyReader | None = None
    follower: ReplyReader | None = None
    late: ReplyReader | None = None
    late_due: bool = False

    def readers(self) -> list[tuple[str, ReplyReader | None]]:
        return [("origin", self.origin), ("follower", self.follower), ("late_joiner", self.late)]

    def settled(self) -> bool:
        if self.origin is None:
            return False
        opened = [reader for _, reader in self.readers() if reader is not None]
        return all(reader.closed.done() for reader in opened) and (self.plan.calls == 0 or self.plan.done)


def _group(problem: str) -> str:
    """A problem with its numbers blanked, to count problems of one kind together."""
    return re.sub(r"\d+", "N", problem)[:120]


def _text_problem(name: str, got: str, want: str) -> str | None:
    if got == want:
        return None
    same = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))
    return f"{name}: text differs from offset {same} ({len(got)} chars, want {len(want)})"


class Runner:
    """Runs levels of the workload against the product, the bare-client baseline, and the unpaced stream."""

    def __init__(self, model: ModelServer, run_id: str, workload: Workload) -> None:
        self.model = model
        self.run_id = run_id
        self.workload = workload
        self._level = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _key(self, index: int) -> str:
        return f"{self.run_id}.{self._level}.{index}"

    async def settle(self, timeout: float = 10.0) -> None:
        """Wait until the model streams nothing (a level's cut replies have ended), then a second more."""
        deadline = time.monotonic() + timeout
        while self.model.active and time.monotonic() < deadline:
            await asyncio.sleep(_POLL_SECONDS)
        await asyncio.sleep(1.0)

    # the product

    async def product_level(
        self,
        streams: int,
        side_a: Sequence[Address],
        side_b: Sequence[Address],
        monitor: ResourceMonitor,
        product_names: Sequence[str],
        purpose: str = "level",
        tokens: int | None = None,
    ) -> LevelResult:
        work = self.workload
        count = tokens or work.tokens
        self._level += 1
        plans, pending = [], []
        for index in range(streams):
            plan = StreamPlan(
                key=self._key(index),
                tokens=self.model.take_tokens(count),
                interval=work.interval,
                release=asyncio.Event(),
                release_timeout=work.release_timeout,
            )
            stream = _Stream(index, plan, side_b[index % len(side_b)], late_after=count // 2)
            plan.on_emitted = functools.partial(self._emitted, stream)
            self.model.register(plan)
            plans.append(plan)
            pending.append(stream)
        all_streams = list(pending)
        self.model.reset_peak()
        monitor.start()
        started = time.monotonic()
        starter = asyncio.get_running_loop().create_task(self._start_origins(all_streams, side_a, started))
        deadline = started + work.level_seconds(count)
        while pending and time.monotonic() < deadline:
            await asyncio.sleep(_POLL_SECONDS)
            pending = [stream for stream in pending if not stream.settled()]
        usage = await monitor.stop()
        wall = time.monotonic() - started
        peak = self.model.reset_peak()
        starter.cancel()
        if pending:
            log.warning("%d of %d streams had not ended by the deadline: cutting them", len(pending), streams)
            for stream in pending:
                for _, reader in stream.readers():
                    if reader is not None:
                        reader.close()
            self.model.cut([stream.plan for stream in pending])
            await asyncio.sleep(_CUT_SECONDS)
        self.model.forget(plans)
        result = self._summarize(all_streams, purpose, wall, usage, product_names, timed_out=len(pending))
        result.model_peak_streams = peak
        return result

    async def _start_origins(self, streams: list[_Stream], side_a: Sequence[Address], started: float) -> None:
        spacing = self.workload.ramp / max(len(streams), 1)
        for stream in streams:
            delay = started + stream.index * spacing - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            host, port = side_a[stream.index % len(side_a)]
            request = post_request(host, port, "/v1/replies", {"content": stream_content(stream.plan.key)})
            stream.origin = ReplyReader(
                request,
                len(stream.plan.tokens),
                TOKEN_CHARS,
                on_started=functools.partial(self._origin_started, stream),
                on_done=functools.partial(self._origin_done, stream),
            )
            self._spawn(stream.origin.open(host, port))

    def _origin_started(self, stream: _Stream, origin: ReplyReader) -> None:
        host, port = stream.side_b
        release = functools.partial(self._release, stream)
        stream.follower = ReplyReader(
            get_request(host, port, f"/v1/messages/{origin.message_id}/events?offset=0"),
            len(stream.plan.tokens),
            TOKEN_CHARS,
            on_started=release,
            on_done=release,
        )
        self._spawn(stream.follower.open(host, port))
        if stream.late_due:
            self._open_late(stream)

    def _origin_done(self, stream: _Stream, origin: ReplyReader) -> None:
        if origin.message_id is None:
            self._release(stream, origin)  # no follower will come: the model need not wait for one

    @staticmethod
    def _release(stream: _Stream, _reader: ReplyReader) -> None:
        if stream.plan.release is not None:
            stream.plan.release.set()

    def _emitted(self, stream: _Stream, count: int) -> None:
        if count < stream.late_after or stream.late is not None or stream.late_due:
            return
        if stream.origin is not None and stream.origin.message_id is not None:
            self._open_late(stream)
        else:
            stream.late_due = True

    def _open_late(self, stream: _Stream) -> None:
        assert stream.origin is not None
        host, port = stream.side_b
        stream.late = ReplyReader(
            get_request(host, port, f"/v1/messages/{stream.origin.message_id}/events?offset=0"),
            len(stream.plan.tokens),
            TOKEN_CHARS,
        )
        self._spawn(stream.late.open(host, port))

    def _summarize(
        self,
        streams: list[_Stream],
        purpose: str,
        wall: float,
        usage: Usage,
        product_names: Sequence[str],
        timed_out: int,
    ) -> LevelResult:
        latencies: dict[str, list[float]] = {name: [] for name in READER_CLASSES}
        joins: list[float] = []
        failures: Counter[str] = Counter()
        examples: list[str] = []
        exact_streams = release_timeouts = 0
        calls: Counter[str] = Counter()
        for stream in streams:
            plan = stream.plan
            text = plan.text
            emit = plan.emit_times
            problems = []
            calls["once" if plan.calls == 1 else "never" if plan.calls == 0 else "more than once"] += 1
            if plan.calls != 1:
                problems.append(f"model called {plan.calls} times")
            if plan.calls and plan.emitted != len(plan.tokens):
                problems.append(f"model emitted {plan.emitted} of {len(plan.tokens)} tokens")
            if plan.failure:
                problems.append(f"model: {plan.failure}")
            release_timeouts += plan.release_timed_out
            started = stream.origin is not None and stream.origin.message_id is not None
            for name, reader in stream.readers():
                if reader is None:
                    if started:  # without a message id there was nothing to follow
                        problems.append(f"{name}: never opened")
                    continue
                problems.extend(f"{name}: {problem}" for problem in reader.problems)
                if reader.status != 200:
                    continue  # refused or unreachable: its problem says so
                text_problem = _text_problem(name, reader.received.text, text)
                if text_problem:
                    problems.append(text_problem)
                finished = reader.finished
                if finished is not None and finished.get("status") != "complete":
                    problems.append(f"{name}: finished {finished.get('status')}: {finished.get('error')}")
                elif finished is not None and finished.get("content") != text:
                    problems.append(f"{name}: finished content differs ({len(finished.get('content') or '')} chars)")
                floor = reader.opened_at if name == "late_joiner" else -math.inf
                received = reader.received.times
                if name == "late_joiner" and received and received[0] == received[0]:
                    joins.append((received[0] - reader.opened_at) * 1000)
                out = latencies[name]
                for k in range(len(emit)):
                    got, sent = received[k], emit[k]
                    if got == got and sent == sent:  # neither is NaN
                        out.append((got - max(sent, floor)) * 1000)
            if problems:
                for problem in problems:
                    failures[_group(problem)] += 1
                if len(examples) < _EXAMPLES:
                    examples.append(f"stream {plan.key}: {'; '.join(problems[:4])}")
            else:
                exact_streams += 1
        emitted = sum(stream.plan.emitted for stream in streams)
        product_cpu = sum(usage.cpu_seconds.get(name, 0.0) for name in product_names)
        return LevelResult(
            streams=len(streams),
            purpose=purpose,
            latency_ms={name: Percentiles.of(values) for name, values in latencies.items()},
            join_ms=Percentiles.of(joins),
            exact=exact_streams == len(streams),
            exact_streams=exact_streams,
            failures=dict(failures),
            examples=examples,
            tokens_emitted=emitted,
            wall_seconds=wall,
            cpu_percent=usage.cpu_percent,
            cpu_seconds=usage.cpu_seconds,
            rss_mib=usage.rss_mib,
            cpu_us_per_token=product_cpu / emitted * 1e6 if emitted else math.nan,
            release_timeouts=release_timeouts,
            model_calls=dict(calls),
            timed_out_streams=timed_out,
        )

    # the baseline: a bare client reading the model server directly

    def _bare_reader(self, plan: StreamPlan) -> ChatReader:
        payload = {
            "model": "bench",
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": stream_content(plan.key)}],
        }
        request = post_request(self.model.host, self.model.port, "/v1/chat/completions", payload)
        return ChatReader(request, len(plan.tokens), TOKEN_CHARS)

    async def baseline_level(self, streams: int) -> BaselineResult:
        work = self.workload
        self._level += 1
        pairs: list[tuple[StreamPlan, ChatReader]] = []
        for index in range(streams):
            plan = StreamPlan(key=self._key(index), tokens=self.model.take_tokens(work.tokens), interval=work.interval)
            self.model.register(plan)
            pairs.append((plan, self._bare_reader(plan)))
        before = os.times()
        started = time.monotonic()
        spacing = work.ramp / max(streams, 1)
        for index, (_, reader) in enumerate(pairs):
            delay = started + index * spacing - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self._spawn(reader.open(self.model.host, self.model.port))
        deadline = started + work.level_seconds()
        pending = list(pairs)
        while pending and time.monotonic() < deadline:
            await asyncio.sleep(_POLL_SECONDS)
            pending = [(plan, reader) for plan, reader in pending if not (reader.closed.done() and plan.done)]
        wall = time.monotonic() - started
        after = os.times()
        for _, reader in pending:
            reader.close()
        self.model.cut([plan for plan, _ in pending])
        self.model.forget([plan for plan, _ in pairs])
        latencies: list[float] = []
        failures: Counter[str] = Counter()
        for plan, reader in pairs:
            emit, received = plan.emit_times, reader.received.times
            latencies.extend((received[k] - emit[k]) * 1000 for k in range(len(emit)) if received[k] == received[k])
            problems = [*reader.problems]
            text_problem = _text_problem("bare", reader.received.text, plan.text)
            if text_problem:
                problems.append(text_problem)
            if plan.calls != 1:
                problems.append(f"model called {plan.calls} times")
            for problem in problems:
                failures[_group(problem)] += 1
        cpu = after.user + after.system - before.user - before.system
        return BaselineResult(
            streams=streams,
            latency_ms=Percentiles.of(latencies),
            exact=not failures,
            failures=dict(failures),
            wall_seconds=wall,
            bench_cpu_percent=100 * cpu / max(wall, 1e-9),
        )

    # one unpaced stream

    async def unpaced(
        self, tokens: int, gateway: Address | None, timeout: float, via: str = "the product"
    ) -> ThroughputResult:
        """One stream as fast as the model can write it, read via the gateway (origin) or bare (gateway None)."""
        self._level += 1
        plan = StreamPlan(key=self._key(0), tokens=self.model.take_tokens(tokens), interval=0.0)
        self.model.register(plan)
        reader: SseClient
        if gateway is None:
            bare = self._bare_reader(plan)
            reader, received, name = bare, bare.received, "bare client"
            host, port = self.model.host, self.model.port
        else:
            host, port = gateway
            request = post_request(host, port, "/v1/replies", {"content": stream_content(plan.key)})
            origin = ReplyReader(request, tokens, TOKEN_CHARS)
            reader, received, name = origin, origin.received, f"origin via {via}"
        await reader.open(host, port)
        try:
            async with asyncio.timeout(timeout):
                await reader.closed
                while not plan.done and plan.calls:
                    await asyncio.sleep(_POLL_SECONDS)
        except TimeoutError:
            reader.close()
            self.model.cut([plan])
            reader.problems.append(f"not done after {timeout:g}s")
        self.model.forget([plan])
        problems = list(reader.problems)
        text_problem = _text_problem(name, received.text, plan.text)
        if text_problem:
            problems.append(text_problem)
        if isinstance(reader, ReplyReader):
            finished = reader.finished or {}
            if finished.get("status") != "complete" or finished.get("content") != plan.text:
                problems.append(
                    f"finished {finished.get('status')}, content equal: {finished.get('content') == plan.text}"
                )
        if plan.calls != 1:
            problems.append(f"model called {plan.calls} times")
        seconds = received.last_at - plan.started_at
        model_seconds = plan.finished_at - plan.started_at
        return ThroughputResult(
            reader=name,
            tokens=tokens,
            chars_received=received.length,
            exact=not problems,
            seconds=seconds,
            chars_per_second=received.length / seconds if seconds > 0 else math.nan,
            model_chars_per_second=len(plan.text) / model_seconds if model_seconds > 0 else math.nan,
            problems=problems,
        )
