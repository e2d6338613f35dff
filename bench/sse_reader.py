"""Lean readers of Server-Sent Events over HTTP/1.1: asyncio protocols, one request per connection.

A reader keeps, for every token of the reply, the time (time.monotonic) at which the data holding the
token's last character arrived; events are parsed by hand and only delta, finished and started data is
JSON-decoded. `ReplyReader` reads the gateway's reply events, `ChatReader` an OpenAI chat-completions
stream (the bare client of the baseline).
"""

from __future__ import annotations

import abc
import asyncio
import json
import math
import time
from array import array
from collections.abc import Callable
from typing import Any

_HEAD_END = b"\r\n\r\n"
# a failed response's body is kept up to this many bytes, for the report
_ERROR_BODY_BYTES = 500
_READ_BYTES = 65536
_decode = json.JSONDecoder().decode


def get_request(host: str, port: int, path: str, last_event_id: str | None = None) -> bytes:
    """A GET of an event stream; `last_event_id` as a reconnecting EventSource sends it."""
    resume = "" if last_event_id is None else f"Last-Event-ID: {last_event_id}\r\n"
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n{resume}Connection: close\r\n\r\n"
    ).encode()


def post_request(host: str, port: int, path: str, payload: dict[str, Any]) -> bytes:
    body = json.dumps(payload).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class SseClient(asyncio.BufferedProtocol, abc.ABC):
    """Sends one request, reads the response head, de-chunks the body and hands each SSE event to on_event.

    A buffered protocol: the socket is read into one buffer of the reader's own (a plain protocol's reads
    each allocate the transport's largest read size, which costs more than the rest of the parsing).
    """

    def __init__(self, request: bytes) -> None:
        self._request = request
        self._view = memoryview(bytearray(_READ_BYTES))
        self._transport: asyncio.Transport | None = None
        self._head = b""
        self._chunked = False
        self._chunk_buf = b""
        self._data_left = 0
        self._crlf_left = 0
        self._sse_buf = b""
        self._error_body = b""
        self.status = 0
        self.opened_at = math.nan
        self.problems: list[str] = []
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def open(self, host: str, port: int) -> None:
        """Connect and send the request; a failure to connect is recorded, not raised."""
        self.opened_at = time.monotonic()
        try:
            await asyncio.get_running_loop().create_connection(lambda: self, host, port)
        except OSError as exc:
            self.problems.append(f"connect failed: {type(exc).__name__}")
            self._closed()

    @property
    def opened(self) -> bool:
        return not math.isnan(self.opened_at)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.status and self.status != 200:
            body = self._error_body.decode("utf-8", "replace")
            self.problems.append(f"HTTP {self.status}: {body[:200]}")
        elif not self.status:
            self.problems.append("closed before a response")
        self._closed()

    def _closed(self) -> None:
        self.on_close()
        if not self.closed.done():
            self.closed.set_result(None)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self._view[:nbytes]), time.monotonic())

    def data_received(self, data: bytes, now: float) -> None:
        if not self.status:
            self._head += data
            end = self._head.find(_HEAD_END)
            if end < 0:
                return
            data = self._head[end + 4 :]
            self._parse_head(self._head[:end].decode("latin-1"))
            self._head = b""
        if self.status != 200:
            self._error_body = (self._error_body + data)[:_ERROR_BODY_BYTES]
            return
        if self._chunked:
            data = self._dechunk(data)
        if not data:
            return
        buf = self._sse_buf + data if self._sse_buf else data
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        blocks = buf.split(b"\n\n")
        self._sse_buf = blocks.pop()
        for block in blocks:
            event = "message"
            data_lines: list[bytes] = []
            for line in block.split(b"\n"):
                if not line or line[0] == 58:  # ':' a comment, such as `: ping`
                    continue
                name, _, value = line.partition(b":")
                if value[:1] == b" ":
                    value = value[1:]
                if name == b"data":
                    data_lines.append(value)
                elif name == b"event":
                    event = value.decode()
            if data_lines:
                self.on_event(event, b"\n".join(data_lines), now)

    def _parse_head(self, head: str) -> None:
        lines = head.split("\r\n")
        parts = lines[0].split(" ", 2)
        try:
            self.status = int(parts[1])
        except (IndexError, ValueError):
            self.status = -1
            return
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "transfer-encoding" and "chunked" in value.lower():
                self._chunked = True

    def _dechunk(self, data: bytes) -> bytes:
        buf = self._chunk_buf + data if self._chunk_buf else data
        out: list[bytes] = []
        pos, end = 0, len(buf)
        while pos < end:
            if self._data_left:
                take = min(self._data_left, end - pos)
                out.append(buf[pos : pos + take])
                pos += take
                self._data_left -= take
            elif self._crlf_left:
                take = min(self._crlf_left, end - pos)
                pos += take
                self._crlf_left -= take
            else:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    break
                size = int(buf[pos:eol].split(b";")[0], 16)
                pos = eol + 2
                if size == 0:
                    pos = end  # the body's end; trailers are ignored
                    self.on_body_end()
                    break
                self._data_left, self._crlf_left = size, 2
        self._chunk_buf = buf[pos:]
        return b"".join(out)

    # hooks

    @abc.abstractmethod
    def on_event(self, event: str, data: bytes, now: float) -> None:
        """One SSE event (its name and raw data), received at `now`."""

    def on_body_end(self) -> None:
        self.close()

    def on_close(self) -> None:
        pass


class TokenTimes:
    """The reply text a reader assembled and, per token, when its last character arrived."""

    def __init__(self, tokens: int, token_chars: int) -> None:
        self.times = array("d", [math.nan]) * tokens
        self.token_chars = token_chars
        self.parts: list[str] = []
        self.length = 0
        self.first_at = math.nan
        self.last_at = math.nan

    def add(self, text: str, now: float) -> None:
        start = self.length
        self.length += len(text)
        self.parts.append(text)
        if math.isnan(self.first_at):
            self.first_at = now
        self.last_at = now
        times = self.times
        chars = self.token_chars
        for k in range(start // chars, min(self.length // chars, len(times))):
            if math.isnan(times[k]):
                times[k] = now

    @property
    def text(self) -> str:
        return "".join(self.parts)


class ReplyReader(SseClient):
    """A reader of the gateway's reply events: started, delta (text at an offset), finished."""

    def __init__(
        self,
        request: bytes,
        tokens: int,
        token_chars: int,
        on_started: Callable[[ReplyReader], None] | None = None,
        on_done: Callable[[ReplyReader], None] | None = None,
        offset: int = 0,
    ) -> None:
        """`offset`: the character the stream is asked to start after; `tokens` count from there."""
        super().__init__(request)
        self.offset = offset
        self.received = TokenTimes(tokens, token_chars)
        self.message_id: str | None = None
        self.finished: dict[str, Any] | None = None
        self.finished_at = math.nan
        self._on_started = on_started
        self._on_done = on_done

    def on_event(self, event: str, data: bytes, now: float) -> None:
        if event == "delta":
            payload = _decode(data.decode())
            text = payload["text"]
            expected = self.offset + self.received.length
            if payload["offset"] != expected:
                self.problems.append(f"delta at offset {payload['offset']}, expected {expected}")
            self.received.add(text, now)
        elif event == "started":
            self.message_id = json.loads(data)["message_id"]
            if self._on_started is not None:
                self._on_started(self)
        elif event == "finished":
            self.finished = json.loads(data)["message"]
            self.finished_at = now
            self.close()
        else:
            self.problems.append(f"unexpected event {event!r}: {data[:100]!r}")

    def on_close(self) -> None:
        if self.finished is None and not self.problems:
            self.problems.append("the stream ended without `finished`")
        if self._on_done is not None:
            callback, self._on_done = self._on_done, None
            callback(self)


class ChatReader(SseClient):
    """The bare client: an OpenAI chat-completions stream read straight from the model server."""

    def __init__(self, request: bytes, tokens: int, token_chars: int) -> None:
        super().__init__(request)
        self.received = TokenTimes(tokens, token_chars)
        self.finish_reason: str | None = None
        self.done = False

    def on_event(self, event: str, data: bytes, now: float) -> None:
        if data == b"[DONE]":
            self.done = True
            self.close()
            return
        chunk = _decode(data.decode())
        for choice in chunk.get("choices", ()):
            content = choice.get("delta", {}).get("content")
            if content:
                self.received.add(content, now)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]

    def on_close(self) -> None:
        if not self.done and not self.problems:
            self.problems.append("the stream ended without [DONE]")
