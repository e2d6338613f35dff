"""Small helpers the tests share: reading a reply's events, waiting for a message to end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable
from typing import Any

import grpc

from genservice.v1 import genservice_pb2 as pb
from genservice.v1 import genservice_pb2_grpc as pb_grpc


async def collect(events: AsyncIterable[pb.ReplyEvent], seconds: float = 15) -> list[pb.ReplyEvent]:
    """Every event to the stream's end; a call already read with read() goes on with read()."""
    got: list[pb.ReplyEvent] = []
    async with asyncio.timeout(seconds):
        if hasattr(events, "read"):
            while (event := await events.read()) is not grpc.aio.EOF:
                got.append(event)
        else:
            async for event in events:
                got.append(event)
    return got


def joined(events: list[pb.ReplyEvent]) -> str:
    """The deltas' text, checking that each starts exactly where the previous ended."""
    text = ""
    start: int | None = None
    for event in events:
        if event.HasField("delta"):
            if start is None:
                start = event.delta.offset
            assert event.delta.offset == start + len(text), "a gap or a repeated character"
            text += event.delta.text
    return text


async def wait_until_ended(
    stub: pb_grpc.GenerationServiceStub, user_id: str, message_id: str, seconds: float = 15
) -> pb.Message:
    """Follow the message to its end (WatchReply), then read it as saved."""
    await collect(stub.WatchReply(pb.WatchReplyRequest(user_id=user_id, message_id=message_id)), seconds)
    message: pb.Message = await stub.GetMessage(pb.GetMessageRequest(user_id=user_id, message_id=message_id))
    return message


async def read_started(call: Any, seconds: float = 10) -> pb.ReplyStarted:
    """Read an open call's first event, which is `started`."""
    async with asyncio.timeout(seconds):
        event = await call.read()
    assert event.HasField("started"), f"expected started, got {event}"
    started: pb.ReplyStarted = event.started
    return started


async def read_text(call: Any, chars: int, seconds: float = 10) -> str:
    """Read an open call's deltas until at least `chars` characters have come; their text."""
    text = ""
    async with asyncio.timeout(seconds):
        while len(text) < chars:
            event = await call.read()
            assert event.HasField("delta"), f"expected a delta, got {event}"
            text += event.delta.text
    return text


async def assert_streaming(stub: pb_grpc.GenerationServiceStub, user_id: str, message_id: str) -> None:
    """The message is saved as STREAMING right now: what the test does next happens mid-reply."""
    message = await stub.GetMessage(pb.GetMessageRequest(user_id=user_id, message_id=message_id))
    assert message.status == pb.MESSAGE_STATUS_STREAMING, pb.MessageStatus.Name(message.status)


async def read_to_the_gate(
    call: Any, chars: int, stub: pb_grpc.GenerationServiceStub, user_id: str
) -> tuple[pb.ReplyStarted, str]:
    """A StreamReply call held at a gate after `chars`: its `started` and its text to there, once STREAMING."""
    started = await read_started(call)
    text = await read_text(call, chars)
    await assert_streaming(stub, user_id, started.message_id)
    return started, text
