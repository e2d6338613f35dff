"""Server-Sent Events framing, as the HTML standard reads it: pure functions from fields to bytes.

Multi-line data becomes several `data:` lines, `id` and `event` may not hold a line break, a
comment is a line starting with `:`, and a blank line ends each event.
"""

from __future__ import annotations

import re

MEDIA_TYPE = "text/event-stream"
# what keeps an idle stream open through proxies; EventSource ignores it
PING = b": ping\n\n"
# headers that keep proxies from buffering or caching a stream
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _single_line(name: str, value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError(f"an SSE {name} cannot hold a line break: {value!r}")
    return value


def encode(
    data: str | None = None, *, event: str | None = None, id: str | None = None, retry: int | None = None
) -> bytes:
    """One event. `data` may hold line breaks (CR, LF or CRLF); each line becomes a `data:` line."""
    lines: list[str] = []
    if id is not None:
        if "\x00" in id:
            raise ValueError("an SSE id cannot hold NUL")
        lines.append(f"id: {_single_line('id', id)}")
    if event is not None:
        lines.append(f"event: {_single_line('event', event)}")
    if data is not None:
        lines.extend(f"data: {line}" for line in _LINE_BREAK.split(data))
    if retry is not None:
        if retry < 0:
            raise ValueError(f"an SSE retry is milliseconds, 0 or more, got {retry}")
        lines.append(f"retry: {retry}")
    if not lines:
        raise ValueError("an SSE event needs at least one field")
    return ("\n".join(lines) + "\n\n").encode()


def comment(text: str = "") -> bytes:
    """A comment block: each line of `text` prefixed with `:`; clients ignore it."""
    return ("".join(f": {line}\n" if line else ":\n" for line in _LINE_BREAK.split(text)) + "\n").encode()
