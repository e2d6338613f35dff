"""The model's stream read by hand: Server-Sent Events from a raw HTTP server, keep-alives, malformed chunks."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import uuid
import zlib
from collections.abc import AsyncIterator, Sequence

import aiohttp
import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from genservice.config import GenServiceConfig
from genservice.model import EventData, ModelFailure, _body_reader, make_client, stream_reply
from genservice.replies.records import Role
from genservice.server import running_service
from genservice.v1 import genservice_pb2 as pb
from genservice.v1 import genservice_pb2_grpc as pb_grpc
from tests.support.grpc_replies import collect, joined


def chunk(text: str | None = None, finish: str | None = None, **extra: object) -> bytes:
    body = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "raw"}
    body["choices"] = [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]
    body.update(extra)
    return b"data: " + json.dumps(body).encode() + b"\n\n"


@dataclasses.dataclass
class RawModel:
    """An HTTP server that answers every request with the same SSE body, written in the given pieces.

    Extra header lines go after the status line; `gap` seconds pass after each piece but the last, and
    `hold` after the last before the connection closes.
    """

    pieces: Sequence[bytes]
    headers: bytes = b""
    gap: float = 0.0
    hold: float = 0.0
    port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n" + self.headers)
        writer.write(b"\r\n")
        for i, piece in enumerate(self.pieces):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(self.gap if i < len(self.pieces) - 1 else self.hold)
        writer.close()


@contextlib.asynccontextmanager
async def serving(model: RawModel) -> AsyncIterator[RawModel]:
    server = await asyncio.start_server(model._answer, "127.0.0.1", 0)
    model.port = server.sockets[0].getsockname()[1]
    async with server:
        yield model


@pytest.fixture
async def raw_model(request: pytest.FixtureRequest) -> AsyncIterator[RawModel]:
    async with serving(RawModel(request.param)) as model:
        yield model


async def read_all(base_url: str, idle_timeout: float = 5) -> tuple[str, list[str | None], Exception | None]:
    """The text, the finish reasons, and the failure that ended the stream (None: it ended cleanly)."""
    client = make_client(base_url, None, max_retries=0, idle_timeout=idle_timeout)
    text, reasons = "", []
    try:
        async for piece in stream_reply(client, "raw", [(Role.USER, "hi")], idle_timeout=idle_timeout):
            text += piece.text
            reasons.append(piece.finish_reason)
    except ModelFailure as failure:
        return text, reasons, failure
    finally:
        await client.close()
    return text, reasons, None


GOOD = [
    b": keep-alive\n\n",
    chunk("Hel") + b": ping\r\n\r\n",
    b"event: message\r\nid: 1\r\n" + chunk("lo, ").replace(b"\n", b"\r\n"),
    chunk("wor")[:9],
    chunk("wor")[9:] + chunk("ld", "stop"),
    b"data: " + json.dumps({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}}).encode() + b"\n\n",
    b"data: [DONE]\n\n",
]


@pytest.mark.parametrize("raw_model", [GOOD], indirect=True)
async def test_keep_alives_fields_and_split_lines_are_read_as_the_standard_says(raw_model: RawModel) -> None:
    text, reasons, failure = await read_all(raw_model.base_url)
    assert failure is None
    assert text == "Hello, world"
    assert "stop" in reasons


def http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def test_a_compressed_body_is_read_as_the_text_it_compresses() -> None:
    body = zlib.compressobj(wbits=31)
    pieces = [body.compress(part) + body.flush(zlib.Z_SYNC_FLUSH) for part in GOOD]
    async with serving(RawModel(pieces, headers=b"content-encoding: gzip\r\n")) as model:
        text, reasons, failure = await read_all(model.base_url)
    assert failure is None
    assert text == "Hello, world"
    assert "stop" in reasons


async def test_an_uncompressed_body_is_read_from_aiohttp_itself() -> None:
    # the path bench.hops measures: a model's body read past the client's own layers
    async with serving(RawModel(GOOD)) as model:
        client = make_client(model.base_url, None, max_retries=0, idle_timeout=5)
        request = client.chat.completions.with_streaming_response.create(model="raw", messages=[], stream=True)
        async with request as response:
            read = _body_reader(response.http_response)
            assert isinstance(getattr(read, "__self__", None), aiohttp.StreamReader)
        await client.close()


CHUNKED = b"transfer-encoding: chunked\r\n"


@pytest.mark.parametrize(
    ("model", "kept", "reason"),
    [
        (RawModel([http_chunk(chunk("kept "))], headers=CHUNKED), "kept ", "dropped mid-reply"),
        (RawModel([chunk("kept ")], headers=b"content-length: 4000\r\n"), "kept ", "dropped mid-reply"),
        (RawModel([b"zz\r\n"], headers=CHUNKED), "", "dropped mid-reply"),
        # the ping comes after aiohttp's own read timeout is off: the silence after it is the idle timer's to catch
        (RawModel([chunk("kept "), b": ping\n\n"], gap=0.1, hold=2), "kept ", "stalled: nothing for 0.3s"),
    ],
)
async def test_a_body_cut_broken_or_silent_ends_the_stream_with_a_reason(
    model: RawModel, kept: str, reason: str
) -> None:
    async with serving(model):
        text, _, failure = await read_all(model.base_url, idle_timeout=0.3)
    assert text == kept
    assert isinstance(failure, ModelFailure) and reason in str(failure)


@pytest.mark.parametrize(
    ("raw_model", "reason"),
    [
        ([chunk("kept "), b"data: {not json\n\n", chunk("lost")], "not JSON"),
        ([chunk("kept "), chunk(None).replace(b"null", b"5", 1), chunk("lost")], "unlike a chat completion chunk"),
        ([chunk("kept "), b'data: ["a list"]\n\n', chunk("lost")], "unlike a chat completion chunk"),
        ([chunk("kept "), b'data: {"error": {"message": "overloaded"}}\n\n', chunk("lost")], "overloaded"),
    ],
    indirect=["raw_model"],
)
async def test_a_malformed_chunk_ends_the_stream_with_a_reason_after_the_text_before_it(
    raw_model: RawModel, reason: str
) -> None:
    text, _, failure = await read_all(raw_model.base_url)
    assert text == "kept "
    assert isinstance(failure, ModelFailure) and reason in str(failure)


@pytest.mark.parametrize("raw_model", [[chunk("kept "), b"data: {not json\n\n"]], indirect=True)
async def test_a_reply_whose_model_sends_a_malformed_chunk_ends_error_with_the_text_before_it(
    raw_model: RawModel, genservice_config: GenServiceConfig
) -> None:
    config = dataclasses.replace(genservice_config, openai_base_url=raw_model.base_url)
    async with running_service(config) as service, grpc.aio.insecure_channel(service.target) as channel:
        stub = pb_grpc.GenerationServiceStub(channel)
        events = await collect(stub.StreamReply(pb.StreamReplyRequest(user_id=f"u-{uuid.uuid4().hex}", content="x")))
    final = events[-1].finished.message
    assert joined(events) == "kept "
    assert final.status == pb.MESSAGE_STATUS_ERROR and final.content == "kept "
    assert "not JSON" in final.error


@given(st.lists(st.integers(min_value=0, max_value=200), max_size=12), st.sampled_from([b"\n", b"\r\n", b"\r"]))
def test_event_data_is_the_same_however_the_bytes_are_split(cuts: list[int], newline: bytes) -> None:
    lines = [b": hello", b"data: one", b"", b"event: x", b"data: two", b"data: lines", b"", b"id: 3", b""]
    # a final CRLF: a line ending in a lone CR at the end is read only when a byte follows
    body = newline.join([*lines, b"data:three", b""]) + b"\r\n"
    parser, events, start = EventData(), [], 0
    for cut in sorted(min(cut, len(body)) for cut in cuts):
        events += parser.feed(body[start:cut])
        start = cut
    events += parser.feed(body[start:])
    assert events == [b"one", b"two\nlines", b"three"]
