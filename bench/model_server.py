"""The bench's model: a minimal OpenAI-compatible streaming server on raw asyncio, in the bench process.

Each reply follows a `StreamPlan` that the bench registered under a stream key; the key travels in the
user's message (`bench stream <key>`). Tokens are due on an open-loop schedule (token k at start + k *
interval); a late timer emits every due token in one chunk. The server keeps, per plan, the emission time
(time.monotonic, the bench's one clock) of every token and how many times the model was called.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

TOKEN_CHARS = 4  # TokenSource makes them as two base-62 pairs
# base 62: 62**4 = 14.8 million unique 4-character tokens in one run
_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_KEY = re.compile(r"bench stream (\S+)")
# an unpaced reply yields to the event loop (and waits for the socket) after this many tokens
_UNPACED_BATCH = 32


class TokenSource:
    """Tokens of TOKEN_CHARS characters, unique over the run: a base-62 counter."""

    def __init__(self) -> None:
        self._next = 0
        self._pairs = [a + b for a in _ALPHABET for b in _ALPHABET]

    def take(self, count: int) -> list[str]:
        pairs = self._pairs
        base = len(pairs)
        if self._next + count > base * base:
            raise RuntimeError("the run used up its unique tokens")
        tokens = [pairs[value // base] + pairs[value % base] for value in range(self._next, self._next + count)]
        self._next += count
        return tokens


def stream_content(key: str) -> str:
    """The user message that carries a stream key to the model."""
    return f"bench stream {key}"


@dataclass(eq=False)
class StreamPlan:
    """One reply: its tokens, its pace, and what the model did (calls, per-token emission times)."""

    key: str
    tokens: list[str]
    # seconds between due tokens; 0: unpaced, as fast as the connection takes them
    interval: float
    # when set, the schedule starts once this is set, or after release_timeout
    release: asyncio.Event | None = None
    release_timeout: float = 5.0
    # called after each write with the number of tokens emitted so far
    on_emitted: Callable[[int], None] | None = None
    emit_times: array[float] = field(init=False)
    calls: int = 0
    emitted: int = 0
    started_at: float = math.nan
    finished_at: float = math.nan
    release_timed_out: bool = False
    # the model's reply ended (completed, cut or failed); False while it runs or before any call
    done: bool = False
    failure: str | None = None

    def __post_init__(self) -> None:
        self.emit_times = array("d", [math.nan]) * len(self.tokens)

    @property
    def text(self) -> str:
        return "".join(self.tokens)


def _frame(payload: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


class _Emission:
    """The paced schedule of one reply: emits every due token when the wheel visits it."""

    def __init__(self, plan: StreamPlan, writer: asyncio.StreamWriter, prefix: bytes, suffix: bytes) -> None:
        self.plan = plan
        self._writer = writer
        self._prefix = prefix
        self._suffix = suffix
        self.t0 = 0.0
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def tick(self, now: float) -> float | None:
        """Write the tokens due by `now`; the time the next one is due, or None when the reply is written."""
        plan = self.plan
        if self.ended.done():
            return None
        if self._writer.is_closing():
            plan.failure = "the model's client closed the connection"
            self.ended.set_result(None)
            return None
        count = len(plan.tokens)
        due = min(count, int((now - self.t0) / plan.interval + 1e-6) + 1)
        if due > plan.emitted:
            first = plan.emitted
            text = "".join(plan.tokens[first:due]).encode()
            times = plan.emit_times
            for k in range(first, due):
                times[k] = now
            self._writer.write(_frame(b"data: " + self._prefix + text + self._suffix + b"\n\n"))
            plan.emitted = due
            if plan.on_emitted is not None:
                plan.on_emitted(due)
        if plan.emitted >= count:
            self.ended.set_result(None)
            return None
        return self.t0 + plan.emitted * plan.interval

    def cancel(self) -> None:
        if not self.ended.done():
            self.ended.set_result(None)


class _Wheel:
    """One timer for every paced reply: a tick visits the replies with a token due by then (1 ms slots).

    A timer handle per reply and token costs the event loop a heap push and pop each; the wheel costs one
    list append. Emission times are read when each token is written, so the slots only bound lateness.
    """

    TICK = 0.001

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._buckets: dict[int, list[_Emission]] = {}
        self._done_slot = int(time.monotonic() / self.TICK)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_slot = 0
        self._running = False

    def start(self, emission: _Emission) -> None:
        now = time.monotonic()
        emission.t0 = now
        emission.plan.started_at = now
        self._file(emission, emission.tick(now))

    def _file(self, emission: _Emission, due: float | None) -> None:
        if due is None:
            return
        slot = max(-int(-due // self.TICK), self._done_slot + 1)
        bucket = self._buckets.get(slot)
        if bucket is None:
            self._buckets[slot] = [emission]
        else:
            bucket.append(emission)
        if not self._running and (self._timer is None or slot < self._timer_slot):
            self._schedule(slot)

    def _schedule(self, slot: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_slot = slot
        self._timer = self._loop.call_at(slot * self.TICK, self._run)

    def _run(self) -> None:
        self._timer = None
        current = int(time.monotonic() / self.TICK)
        first, self._done_slot = self._done_slot + 1, current
        self._running = True
        try:
            for slot in range(first, current + 1):
                bucket = self._buckets.pop(slot, None)
                if bucket is not None:
                    for emission in bucket:
                        # filed again, each lands in a slot after `current`
                        self._file(emission, emission.tick(time.monotonic()))
        finally:
            self._running = False
        if self._buckets:
            self._schedule(min(self._buckets))


class ModelServer:
    """`POST /v1/chat/completions` (stream) on 127.0.0.1, a free port; HTTP/1.1 keep-alive, chunked replies."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self._server: asyncio.Server | None = None
        self._plans: dict[str, StreamPlan] = {}
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._serving: dict[str, asyncio.StreamWriter] = {}
        self._tokens = TokenSource()
        self._wheel: _Wheel | None = None
        self.unknown_requests = 0
        # replies being streamed now, and the most at once since the last reset_peak()
        self.active = 0
        self.peak_active = 0

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, self.host, 0, backlog=4096)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._handlers:
            # the handlers see their connections end and return; none is left to be cancelled at the loop's end
            await asyncio.wait(list(self._handlers), timeout=2.0)
        self._writers.clear()

    def reset_peak(self) -> int:
        """The most replies streamed at once since the last call."""
        peak, self.peak_active = self.peak_active, self.active
        return peak

    def take_tokens(self, count: int) -> list[str]:
        return self._tokens.take(count)

    def register(self, plan: StreamPlan) -> None:
        self._plans[plan.key] = plan

    def forget(self, plans: list[StreamPlan]) -> None:
        for plan in plans:
            self._plans.pop(plan.key, None)

    def cut(self, plans: list[StreamPlan]) -> int:
        """Cut the model connections of those plans still emitting; how many were cut."""
        cut = 0
        for plan in plans:
            writer = self._serving.get(plan.key)
            if writer is not None and not plan.done:
                plan.failure = plan.failure or "cut by the bench at the level's deadline"
                writer.transport.abort()
                cut += 1
        return cut

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                parts = lines[0].split(" ")
                if len(parts) != 3:
                    return
                method, target, version = parts
                headers = {}
                for line in lines[1:]:
                    name, sep, value = line.partition(":")
                    if sep:
                        headers[name.strip().lower()] = value.strip()
                try:
                    body = await reader.readexactly(int(headers.get("content-length", "0")))
                except (asyncio.IncompleteReadError, ConnectionError, ValueError):
                    return
                keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
                if method == "POST" and target.split("?")[0].endswith("/chat/completions"):
                    await self._chat(body, writer)
                else:
                    self._error(writer, 404, f"no route {method} {target}")
                if not keep_alive or writer.is_closing():
                    return
        finally:
            self._writers.discard(writer)
            if handler is not None:
                self._handlers.discard(handler)
            writer.close()

    def _error(self, writer: asyncio.StreamWriter, status: int, message: str) -> None:
        body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "code": None}}).encode()
        writer.write(
            b"HTTP/1.1 %d Error\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (status, len(body), body)
        )

    async def _chat(self, body: bytes, writer: asyncio.StreamWriter) -> None:
        try:
            request: dict[str, Any] = json.loads(body)
            content = request["messages"][-1]["content"]
            if isinstance(content, list):
                content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        except (ValueError, KeyError, IndexError, TypeError):
            self._error(writer, 400, "expected a chat completions request")
            return
        match = _KEY.search(str(content))
        plan = self._plans.get(match.group(1)) if match else None
        if plan is None:
            self.unknown_requests += 1
            self._error(writer, 400, "no bench stream key in the last message")
            return
        plan.calls += 1
        if plan.calls > 1:
            # a second call for one stream: answered with tokens of its own, which no reader should ever see
            plan = StreamPlan(key=plan.key, tokens=self.take_tokens(len(plan.tokens)), interval=plan.interval)
        else:
            self._serving[plan.key] = writer
        model = json.dumps(str(request.get("model") or "bench")).encode()
        stream_options = request.get("stream_options")
        usage = isinstance(stream_options, dict) and bool(stream_options.get("include_usage"))
        envelope = b'{"id":"chatcmpl-%s","object":"chat.completion.chunk","created":%d,"model":%s,' % (
            plan.key.encode(),
            int(time.time()),
            model,
        )
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        self.active += 1
        self.peak_active = max(self.peak_active, self.active)
        try:
            await self._emit(plan, writer, envelope)
            if writer.is_closing():
                return
            ending = envelope + b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}'
            tail = b"data: " + ending + b"\n\n"
            if usage:
                count = len(plan.tokens)
                tail += (
                    b"data: "
                    + envelope
                    + b'"choices":[],"usage":{"prompt_tokens":8,"completion_tokens":%d,"total_tokens":%d}}\n\n'
                    % (count, count + 8)
                )
            tail += b"data: [DONE]\n\n"
            writer.write(_frame(tail) + b"0\r\n\r\n")
            await writer.drain()
        except ConnectionError as exc:
            plan.failure = plan.failure or f"the model's connection failed: {exc!r}"
        finally:
            self.active -= 1
            plan.done = True
            plan.finished_at = time.monotonic()
            if self._serving.get(plan.key) is writer:
                del self._serving[plan.key]

    async def _emit(self, plan: StreamPlan, writer: asyncio.StreamWriter, envelope: bytes) -> None:
        await writer.drain()
        if plan.release is not None:
            try:
                async with asyncio.timeout(plan.release_timeout):
                    await plan.release.wait()
            except TimeoutError:
                plan.release_timed_out = True
        prefix = envelope + b'"choices":[{"index":0,"delta":{"content":"'
        suffix = b'"},"finish_reason":null}]}'
        if plan.interval > 0:
            if self._wheel is None:
                self._wheel = _Wheel()
            emission = _Emission(plan, writer, prefix, suffix)
            self._wheel.start(emission)
            try:
                await emission.ended
            finally:
                emission.cancel()
            return
        plan.started_at = time.monotonic()
        times = plan.emit_times
        count = len(plan.tokens)
        for first in range(0, count, _UNPACED_BATCH):
            if writer.is_closing():
                plan.failure = "the model's client closed the connection"
                return
            last = min(first + _UNPACED_BATCH, count)
            # one chunk per token, several chunks per write: the socket, not the bench, sets the pace
            frames = b"".join(
                _frame(b"data: " + prefix + token.encode() + suffix + b"\n\n") for token in plan.tokens[first:last]
            )
            now = time.monotonic()
            for k in range(first, last):
                times[k] = now
            writer.write(frames)
            plan.emitted = last
            if plan.on_emitted is not None:
                plan.on_emitted(last)
            await writer.drain()
            await asyncio.sleep(0)
