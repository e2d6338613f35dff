"""The gateway's HTTP/1.1 protocol: uvicorn's httptools protocol with a header deadline and a connection limit.

uvicorn bounds only the idle time between requests; a client that opens a connection and sends its
headers a byte at a time (slowloris) would hold the connection forever. Here the headers of each
request must be complete within the timeout, counted from the connection's opening or the end of the
previous response, or the connection is closed. A connection past the limit is answered 503 with
Retry-After at once and closed, before it costs anything more.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

FULL_RETRY_SECONDS = 1
_FULL_BODY = json.dumps(
    {"error": {"code": "unavailable", "message": "the gateway has too many open connections; try again"}}
).encode()
FULL_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    + f"retry-after: {FULL_RETRY_SECONDS}\r\ncontent-length: {len(_FULL_BODY)}\r\n".encode()
    + b"connection: close\r\n\r\n"
    + _FULL_BODY
)


class _GuardedProtocol(HttpToolsProtocol):
    header_timeout: float = 10.0
    max_connections: int = 10_000

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.write(FULL_RESPONSE)
            transport.close()
            return
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_headers_complete(self) -> None:
        # the request's headers are in: its body has a deadline of its own, in the app
        self._disarm()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        # a pipelined request waiting here already has its headers
        waiting = bool(self.pipeline)
        super().on_response_complete()
        if not waiting and not self.transport.is_closing():
            self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.logger.debug("closing a connection whose request headers did not arrive in %.0fs", self.header_timeout)
            self.transport.close()


def guarded_protocol(header_timeout: float, max_connections: int) -> type[HttpToolsProtocol]:
    """The protocol class for uvicorn's `http` setting, with this header deadline and connection limit."""
    settings = {"header_timeout": header_timeout, "max_connections": max_connections}
    return type("GuardedProtocol", (_GuardedProtocol,), settings)
