"""The tests' OpenAI-compatible model server: demo-llm's wire format, driven by directives in the user's message.

The last user message may hold one directive in double brackets, e.g. `hi [[len=5000 chunk=7 error_after=300]]`:

    len=N           reply length in code points (default 96)
    chunk=N         code points per streamed chunk (default 5)
    delay=S         seconds before each chunk (default 0)
    status=CODE     answer HTTP CODE (OpenAI error body) before any token
    flaky=K         with status=CODE: fail only the first K requests carrying this same directive, then succeed
    error_after=N   after N code points send an SSE error chunk and end the stream (openai raises APIError)
    drop_after=N    after N code points cut the connection mid-body (openai raises APIConnectionError)
    stall_after=N   after N code points pause for `stall` seconds
    stall=S         length of that pause (default 0)
    gate=NAME       hold the stream at the gate NAME (from `ModelServer.gate()`) until the test releases it
    hold_after=N    with gate=NAME: where to hold, after N code points (default 0, before any text)
    finish=REASON   finish_reason of the last chunk (default stop)
    nul_at=N        the character at N is a NUL, which Postgres text cannot hold
    say=TEXT        reply with TEXT, percent-encoded (urllib.parse.quote(text, safe="")), instead of made-up words

Counts past the reply's end act after its last character; at one count, a gate holds first, then a stall, then an
error or a drop. The *_after counts, the pace and the gate apply to streamed replies only.
The reply text is `expected_reply(content)`: it depends only on the message, so tests can check saved text exactly.
A bad directive, or a gate this server did not hand out, is answered with HTTP 400 (openai raises BadRequestError).
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import logging
import math
import random
import re
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import uvicorn
from starlette.responses import Response, StreamingResponse
from starlette.types import Send

from genservice.demo_llm.app import paced
from genservice.demo_llm.wire import (
    ChatRequest,
    completion_response,
    error_response,
    event_stream,
    openai_app,
    sse,
    stream_events,
)

logger = logging.getLogger(__name__)

DEFAULT_REPLY_LEN = 96
_DIRECTIVE = re.compile(r"\[\[([^\[\]]*)\]\]")
# Precomposed characters only, so any cut is between whole characters; several take 2 UTF-16 units or 2-4 bytes.
_VOCABULARY = (
    "the", "model", "streams", "a", "reply", "of", "text", "to", "save", "offset", "token", "chunk", "and",
    "café", "naïve", "résumé", "é", "ünïcödé", "中", "中文", "字符", "🚀", "😀", "🎉", "𝄞", "ok", "—",
)  # fmt: skip


@dataclass(frozen=True)
class Directive:
    text: str = ""  # what stood between the brackets, the key of the flaky counter
    length: int = DEFAULT_REPLY_LEN
    chunk: int = 5
    delay: float = 0.0
    status: int | None = None
    flaky: int | None = None
    error_after: int | None = None
    drop_after: int | None = None
    stall_after: int | None = None
    stall: float = 0.0
    gate: str | None = None
    hold_after: int | None = None
    finish: str = "stop"
    nul_at: int | None = None
    say: str | None = None


def _count(value: str) -> int:
    if not value.isdigit():
        raise ValueError(f"expected a whole number >= 0, got {value!r}")
    return int(value)


def _positive(value: str) -> int:
    if _count(value) < 1:
        raise ValueError(f"expected a whole number >= 1, got {value!r}")
    return int(value)


def _seconds(value: str) -> float:
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"expected seconds >= 0, got {value!r}")
    return seconds


def _status(value: str) -> int:
    if not 400 <= _count(value) <= 599:
        raise ValueError(f"expected an HTTP error status 400..599, got {value!r}")
    return int(value)


def parse_directive(content: str) -> Directive:
    """The directive in a user message (defaults when there is none); ValueError for a malformed one."""
    match = _DIRECTIVE.search(content)
    if match is None:
        return Directive()
    keys: dict[str, tuple[str, Callable[[str], object]]] = {
        "len": ("length", _count),
        "chunk": ("chunk", _positive),
        "delay": ("delay", _seconds),
        "status": ("status", _status),
        "flaky": ("flaky", _positive),
        "error_after": ("error_after", _count),
        "drop_after": ("drop_after", _count),
        "stall_after": ("stall_after", _count),
        "stall": ("stall", _seconds),
        "gate": ("gate", str),
        "hold_after": ("hold_after", _count),
        "finish": ("finish", str),
        "nul_at": ("nul_at", _count),
        "say": ("say", urllib.parse.unquote),
    }
    values: dict[str, Any] = {"text": match.group(1).strip()}
    for item in match.group(1).split():
        key, sep, value = item.partition("=")
        if not sep or key not in keys:
            raise ValueError(f"directive item {item!r}: expected KEY=VALUE with KEY among {', '.join(keys)}")
        name, convert = keys[key]
        try:
            values[name] = convert(value)
        except ValueError as err:
            raise ValueError(f"directive item {item!r}: {err}") from None
    directive = Directive(**values)
    if directive.flaky is not None and directive.status is None:
        raise ValueError("directive: flaky=K needs status=CODE")
    if directive.hold_after is not None and directive.gate is None:
        raise ValueError("directive: hold_after=N needs gate=NAME")
    return directive


def expected_reply(content: str) -> str:
    """The exact text the server streams for a last user message `content`."""
    rng = random.Random(hashlib.sha256(content.encode("utf-8", "surrogatepass")).digest())
    directive = parse_directive(content)
    parts: list[str] = []
    size = 0
    while size < directive.length:
        word = rng.choice(_VOCABULARY) + ("\n" if rng.random() < 0.08 else " ")
        parts.append(word)
        size += len(word)
    text = "".join(parts)[: directive.length] if directive.say is None else directive.say
    if directive.nul_at is not None and directive.nul_at < len(text):
        text = text[: directive.nul_at] + "\x00" + text[directive.nul_at + 1 :]
    return text


class Gate:
    """A named hold in the model server's streams, shared by the server's thread and the test's.

    Streams whose directive names it wait at it, on the server's loop, until `release()`; `await reached()` returns
    once one has. Used as a context manager, it is released at the end of the block whatever happens in it.
    """

    def __init__(self, name: str, hold_seconds: float) -> None:
        self.name = name
        self._hold_seconds = hold_seconds
        self._lock = threading.Lock()
        self._reached = threading.Event()
        self._released = False
        self._held: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    def at(self, chars: int = 0) -> str:
        """The directive items that hold a stream at this gate after `chars` code points."""
        return f"gate={self.name} hold_after={chars}"

    async def reached(self, seconds: float = 10) -> None:
        """Return once a stream waits at the gate (or has passed it); TimeoutError after `seconds`."""
        if not await asyncio.to_thread(self._reached.wait, seconds):
            raise TimeoutError(f"no stream reached gate {self.name} within {seconds:g}s")

    def release(self) -> None:
        """Let every stream held here go on, and every later one pass; idempotent, callable from any thread."""
        with self._lock:
            self._released = True
            held, self._held = self._held, []
        for loop, opened in held:
            loop.call_soon_threadsafe(opened.set)

    async def hold(self) -> None:
        """On the server's loop: wait until released, for at most the server's hold bound."""
        opened = asyncio.Event()
        with self._lock:
            if self._released:
                opened.set()
            else:
                self._held.append((asyncio.get_running_loop(), opened))
        self._reached.set()
        try:
            async with asyncio.timeout(self._hold_seconds):
                await opened.wait()
        except TimeoutError:
            raise RuntimeError(f"gate {self.name} was not released within {self._hold_seconds:g}s") from None

    def __enter__(self) -> Gate:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


class _ModelFailure(Exception):
    """Raised by a reply's text source to end the stream with an SSE error chunk."""


class _Drop(Exception):
    """Raised by a reply's text source to end the response without its final chunk."""


class _DroppableStreamingResponse(StreamingResponse):
    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        except _Drop:  # returning with the body unfinished makes uvicorn close the transport
            logger.info("dropping the connection mid-stream as planned")


async def _pieces(directive: Directive, text: str, gate: Gate | None) -> AsyncIterator[str]:
    """The reply's text at the directive's pace, with its hold, stall, error or drop each met at its exact count."""
    hold_at, stall_at, error_at, drop_at = (
        None if mark is None else min(mark, len(text))
        for mark in (
            None if gate is None else (directive.hold_after or 0),
            directive.stall_after,
            directive.error_after,
            directive.drop_after,
        )
    )
    start = 0
    for mark in sorted({mark for mark in (hold_at, stall_at, error_at, drop_at, len(text)) if mark is not None}):
        async for piece in paced(text[start:mark], directive.chunk, directive.delay):
            yield piece
        start = mark
        if mark == hold_at and gate is not None:
            await gate.hold()
        if mark == stall_at:
            await asyncio.sleep(directive.stall)
        if mark == error_at:
            raise _ModelFailure
        if mark == drop_at:
            raise _Drop


async def _events(request: ChatRequest, directive: Directive, text: str, gate: Gate | None) -> AsyncIterator[str]:
    try:
        async for event in stream_events(request, _pieces(directive, text, gate), directive.finish):
            yield event
    except _ModelFailure:
        yield sse({"error": {"message": "the model failed mid-stream (planned)", "type": "server_error"}})


class ModelServer:
    """The directive-driven app on 127.0.0.1, on a free port, served by uvicorn in a thread with its own loop."""

    def __init__(self, *, shutdown_grace: int = 2, hold_seconds: float = 60) -> None:
        self._shutdown_grace = shutdown_grace
        self._hold_seconds = hold_seconds
        self._lock = threading.Lock()
        self._requests: list[dict[str, Any]] = []
        self._attempts: dict[str, int] = {}
        self._gates: dict[str, Gate] = {}
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        if self._socket is None:
            raise RuntimeError("the model server is not started")
        host, port = self._socket.getsockname()[:2]
        return f"http://{host}:{port}/v1"

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Copies of the JSON bodies of the chat-completions requests received so far, oldest first."""
        with self._lock:
            return copy.deepcopy(self._requests)

    def gate(self) -> Gate:
        """A new gate, for a directive's `gate=NAME` (see `Gate.at`)."""
        gate = Gate(f"g{uuid.uuid4().hex[:12]}", self._hold_seconds)
        with self._lock:
            self._gates[gate.name] = gate
        return gate

    def respond(self, request: ChatRequest) -> Response:
        with self._lock:
            self._requests.append(copy.deepcopy(request.body))
        content = request.last_user_text
        directive = parse_directive(content)
        status = directive.status
        if directive.flaky is not None:
            with self._lock:
                attempt = self._attempts[directive.text] = self._attempts.get(directive.text, 0) + 1
            status = status if attempt <= directive.flaky else None
        if status is not None:
            return error_response(status, f"the model answered HTTP {status} (planned)")
        text = expected_reply(content)
        if not request.stream:
            return completion_response(request, text, directive.finish)
        gate = None
        if directive.gate is not None:
            with self._lock:
                gate = self._gates.get(directive.gate)
            if gate is None:
                raise ValueError(f"directive: no gate named {directive.gate!r} was handed out by this server")
        return event_stream(_events(request, directive, text, gate), _DroppableStreamingResponse)

    def start(self, timeout: float = 10.0) -> None:
        if self._thread is not None:
            raise RuntimeError("the model server is already started")
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        config = uvicorn.Config(
            openai_app(self.respond),
            log_config=None,
            lifespan="off",
            loop="asyncio",
            http="h11",
            timeout_graceful_shutdown=self._shutdown_grace,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name="model-server", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the model server did not start")
            time.sleep(0.01)

    def stop(self, timeout: float = 10.0) -> None:
        """Release every gate, let running replies finish for up to `shutdown_grace` seconds, cancel the rest."""
        with self._lock:
            gates = list(self._gates.values())
        for gate in gates:
            gate.release()
        server, thread, sock = self._server, self._thread, self._socket
        self._server = self._thread = self._socket = None
        if server is not None and thread is not None:
            server.should_exit = True
            thread.join(timeout)
            if thread.is_alive():
                server.force_exit = True
                thread.join(timeout)
            if thread.is_alive():
                raise RuntimeError("the model server thread did not stop")
        if sock is not None:
            sock.close()

    def __enter__(self) -> ModelServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
