"""The shared owner stream on its own, fed by a source the test writes to."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from gateway.live_replies import LiveReplies, LiveReplyLost
from gateway.metrics import GatewayMetrics
from gateway.relay import close_events
from genservice.v1 import genservice_pb2 as pb

STARTED = pb.ReplyEvent(started=pb.ReplyStarted(message_id="m", conversation_id="c"))


class Owner:
    """What the owner sends on each WatchReply, put by the test; None ends the stream without `finished`."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[pb.ReplyEvent | None] = asyncio.Queue()
        self.calls: list[pb.WatchReplyRequest] = []
        self.sent = 0
        self.closed = asyncio.Event()

    async def watch(self, address: str, request: pb.WatchReplyRequest) -> AsyncIterator[pb.ReplyEvent]:
        self.calls.append(request)
        try:
            while (event := await self.queue.get()) is not None:
                yield event
        finally:
            self.closed.set()

    def put(self, text: str) -> None:
        self.queue.put_nowait(pb.ReplyEvent(delta=pb.ReplyDelta(offset=self.sent, text=text)))
        self.sent += len(text)


def live_replies(owner: Owner, max_chars: int = 1000) -> tuple[LiveReplies, CollectorRegistry]:
    registry = CollectorRegistry()
    return LiveReplies(owner.watch, GatewayMetrics(registry).owner_streams, max_chars), registry


async def test_a_slow_follower_gets_everything_waiting_as_one_delta() -> None:
    owner = Owner()
    live, registry = live_replies(owner)
    owner.queue.put_nowait(STARTED)
    fast = aiter(live.follow("o", "u", "m", 0))
    slow = aiter(live.follow("o", "u", "m", 2))
    assert await anext(fast) == await anext(slow) == STARTED
    for piece in ["ab", "cd", "ef"]:
        owner.put(piece)
        assert (await anext(fast)).delta.text == piece
    assert (await anext(slow)).delta == pb.ReplyDelta(offset=2, text="cdef")
    assert len(owner.calls) == 1 and owner.calls[0].offset == 0
    assert registry.get_sample_value("gateway_owner_streams") == 1
    await close_events(fast)
    assert not owner.closed.is_set()
    # the last follower gone, the owner's stream is closed
    await close_events(slow)
    async with asyncio.timeout(5):
        await owner.closed.wait()
    await live.close()
    assert registry.get_sample_value("gateway_owner_streams") == 0


async def test_past_the_cap_every_follower_is_let_go_after_what_it_was_sent() -> None:
    owner = Owner()
    live, _ = live_replies(owner, max_chars=5)
    owner.queue.put_nowait(STARTED)
    follower = live.follow("o", "u", "m", 0)
    await anext(follower)
    owner.put("abc")
    assert (await anext(follower)).delta.text == "abc"
    owner.put("def")
    with pytest.raises(LiveReplyLost):
        await anext(follower)
    # the next follower of that reply is let go at once, with no second stream on the owner
    with pytest.raises(LiveReplyLost):
        await anext(live.follow("o", "u", "m", 0))
    assert len(owner.calls) == 1
    await live.close()
