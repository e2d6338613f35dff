"""The tests' OpenAI-compatible model server: the demo-llm app driven by directives written in the user's message.

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
    finish=REASON   finish_reason of the last chunk (default stop)
    nul_at=N        the character at N is a NUL, which Postgres text cannot hold
    say=TEXT        reply with TEXT, percent-encoded (urllib.parse.quote(text, safe="")), instead of made-up words

The reply text is `expected_reply(content)`: it depends only on the message, so tests can check saved text exactly.
A bad directive is answered with HTTP 400 (openai raises BadRequestError).
"""

from __future__ import annotations

import copy
import hashlib
import math
import random
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import uvicorn

from genservice.demo_llm.app import ChatRequest, ReplyPlan, create_app

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


class ModelServer:
    """The directive-driven app on 127.0.0.1, on a free port, served by uvicorn in a thread with its own loop."""

    def __init__(self, *, shutdown_grace: int = 2) -> None:
        self._shutdown_grace = shutdown_grace
        self._lock = threading.Lock()
        self._requests: list[dict[str, Any]] = []
        self._attempts: dict[str, int] = {}
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

    def plan(self, request: ChatRequest) -> ReplyPlan:
        with self._lock:
            self._requests.append(copy.deepcopy(request.body))
        content = request.last_user_text
        directive = parse_directive(content)
        status = directive.status
        if directive.flaky is not None:
            with self._lock:
                attempt = self._attempts[directive.text] = self._attempts.get(directive.text, 0) + 1
            status = status if attempt <= directive.flaky else None
        return ReplyPlan(
            text=expected_reply(content),
            chunk_chars=directive.chunk,
            delay=directive.delay,
            fail_status=status,
            error_after=directive.error_after,
            drop_after=directive.drop_after,
            stall_after=directive.stall_after,
            stall_seconds=directive.stall,
            finish_reason=directive.finish,
        )

    def start(self, timeout: float = 10.0) -> None:
        if self._thread is not None:
            raise RuntimeError("the model server is already started")
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        config = uvicorn.Config(
            create_app(self.plan),
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
        """Let running replies finish for up to `shutdown_grace` seconds, cancel the rest, join the thread."""
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
