"""An OpenAI-compatible endpoint that streams a few good chunks and then one the client does not expect.

A real HTTP server on a free port, in the test's own event loop: what a proxy's keep-alive line or
a provider's unusual chunk looks like to genservice.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

# chunks of text before the bad one
GOOD_CHUNKS = ("Hello", ", wor", "ld! ", "and ", "then")
GOOD_TEXT = "".join(GOOD_CHUNKS)
# what comes after the good chunks, by name
BAD_LINES = {
    "not-json": "data: : keep-alive, not JSON",
    "odd-shape": 'data: {"id":"x","object":"chat.completion.chunk","choices":7}',
}


def _chunk(text: str) -> str:
    body = {
        "id": "odd",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "odd",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }
    return f"data: {json.dumps(body)}\n\n"


@asynccontextmanager
async def odd_model(bad: str) -> AsyncIterator[str]:
    """The base URL of a model that sends GOOD_TEXT in chunks, then BAD_LINES[bad], then the end."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            await reader.readexactly(length)
            body = (
                "".join(_chunk(text) for text in GOOD_CHUNKS)
                + BAD_LINES[bad]
                + "\n\n"
                + _chunk("never")
                + "data: [DONE]\n\n"
            )
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n" + body.encode()
            )
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.close()
        await server.wait_closed()
