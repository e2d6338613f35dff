"""The shared replies and the owner's one stream on their own, fed by a call the test answers for the owner."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from gateway.live_replies import LiveReplies, LiveReplyLost
from gateway.metrics import GatewayMetrics
from gateway.owner_streams import OwnerStreams
from gateway.relay import close_events
from genservice.v1 import genservice_pb2 as pb


class Call:
    """One WatchReplies call as the owner would answer it: the test puts the responses; None ends the stream."""

    def __init__(self) -> None:
        self.responses: asyncio.Queue[pb.WatchRepliesResponse | None] = asyncio.Queue()
        self.requests: list[pb.WatchRepliesRequest] = []
        self.written = asyncio.Event()
        self.cancelled = False
        self.sent: dict[int, int] = {}

    async def write(self, request: pb.WatchRepliesRequest) -> None:
        self.requests.append(request)
        self.written.set()

    def cancel(self) -> bool:
        self.cancelled = True
        return True

    def __aiter__(self) -> AsyncIterator[pb.WatchRepliesResponse]:
        return self._responses()

    async def _responses(self) -> AsyncIterator[pb.WatchRepliesResponse]:
        while (response := await self.responses.get()) is not None:
            yield response

    async def watches(self, count: int) -> list[pb.ReplyWatch]:
        async with asyncio.timeout(5):
            while sum(len(r.watch) for r in self.requests) < count:
                self.written.clear()
                await self.written.wait()
        return [w for r in self.requests for w in r.watch]

    async def unwatched(self) -> list[int]:
        async with asyncio.timeout(5):
            while not any(r.unwatch for r in self.requests):
                self.written.clear()
                await self.written.wait()
        return [i for r in self.requests for i in r.unwatch]

    def started(self, watch_id: int) -> None:
        event = pb.ReplyEvent(started=pb.ReplyStarted(message_id="m", conversation_id="c"))
        self.send(pb.WatchedEvent(watch_id=watch_id, event=event))

    def put(self, watch_id: int, text: str) -> None:
        offset = self.sent.get(watch_id, 0)
        self.sent[watch_id] = offset + len(text)
        event = pb.ReplyEvent(delta=pb.ReplyDelta(offset=offset, text=text))
        self.send(pb.WatchedEvent(watch_id=watch_id, event=event))

    def send(self, *events: pb.WatchedEvent) -> None:
        self.responses.put_nowait(pb.WatchRepliesResponse(events=events))


class Owners:
    def __init__(self) -> None:
        self.calls: list[Call] = []
        self._opened = asyncio.Event()

    def open_call(self, address: str) -> Call:
        call = Call()
        self.calls.append(call)
        self._opened.set()
        return call

    async def call(self, index: int = 0) -> Call:
        """The index-th call opened, once it is."""
        async with asyncio.timeout(5):
            while len(self.calls) <= index:
                self._opened.clear()
                await self._opened.wait()
        return self.calls[index]


def live_replies(owners: Owners, max_chars: int = 1000) -> tuple[LiveReplies, CollectorRegistry]:
    registry = CollectorRegistry()
    streams = OwnerStreams(owners.open_call)
    return LiveReplies(streams, GatewayMetrics(registry).owner_streams, max_chars), registry


async def test_a_slow_follower_gets_everything_waiting_as_one_delta() -> None:
    owners = Owners()
    live, registry = live_replies(owners)
    fast = aiter(live.follow("o", "u", "m", 0))
    slow = aiter(live.follow("o", "u", "m", 2))
    first_fast = asyncio.ensure_future(anext(fast))
    call = await owners.call()
    (watch,) = await call.watches(1)
    assert (watch.user_id, watch.message_id, watch.offset) == ("u", "m", 0)
    call.started(watch.watch_id)
    assert await first_fast == await anext(slow)
    for piece in ["ab", "cd", "ef"]:
        call.put(watch.watch_id, piece)
        assert (await anext(fast)).delta.text == piece
    assert (await anext(slow)).delta == pb.ReplyDelta(offset=2, text="cdef")
    assert registry.get_sample_value("gateway_owner_streams") == 1
    await close_events(fast)
    assert not any(r.unwatch for r in call.requests)
    # the last follower gone, the reply is unwatched; the owner's stream stays for the next
    await close_events(slow)
    assert await call.unwatched() == [watch.watch_id]
    assert registry.get_sample_value("gateway_owner_streams") == 0
    assert not call.cancelled
    await live.close()
    assert call.cancelled


async def test_replies_on_one_owner_share_its_stream_and_fail_alone() -> None:
    owners = Owners()
    live, _ = live_replies(owners)
    one = aiter(live.follow("o", "u", "m1", 0))
    two = aiter(live.follow("o", "u", "m2", 0))
    firsts = asyncio.gather(anext(one), anext(two))
    call = await owners.call()
    first, second = await call.watches(2)
    call.started(first.watch_id)
    call.started(second.watch_id)
    await firsts
    call.send(
        pb.WatchedEvent(watch_id=first.watch_id, event=pb.ReplyEvent(delta=pb.ReplyDelta(offset=0, text="one"))),
        pb.WatchedEvent(watch_id=second.watch_id, lost="the reply ended on another process"),
    )
    assert (await anext(one)).delta.text == "one"
    with pytest.raises(LiveReplyLost):
        await anext(two)
    # the stream's end lets go of every reply still on it
    call.responses.put_nowait(None)
    with pytest.raises(LiveReplyLost):
        await anext(one)
    # and the next follower opens another
    three = aiter(live.follow("o", "u", "m3", 0))
    pending = asyncio.ensure_future(anext(three))
    await (await owners.call(1)).watches(1)
    pending.cancel()
    await live.close()


async def test_past_the_cap_every_follower_is_let_go_after_what_it_was_sent() -> None:
    owners = Owners()
    live, _ = live_replies(owners, max_chars=5)
    follower = live.follow("o", "u", "m", 0)
    pending = asyncio.ensure_future(anext(follower))
    call = await owners.call()
    (watch,) = await call.watches(1)
    call.started(watch.watch_id)
    await pending
    call.put(watch.watch_id, "abc")
    assert (await anext(follower)).delta.text == "abc"
    call.put(watch.watch_id, "def")
    with pytest.raises(LiveReplyLost):
        await anext(follower)
    assert await call.unwatched() == [watch.watch_id]
    # the next follower of that reply is let go at once, with no second watch
    with pytest.raises(LiveReplyLost):
        await anext(live.follow("o", "u", "m", 0))
    assert len(await call.watches(1)) == 1
    await live.close()
