"""One watch per live reply per gateway process, shared by every follower of that reply here.

The shared reply watches the owner from offset 0, on this process's one WatchReplies stream to that
genservice (owner_streams), and keeps the whole text it got (a reply is bounded, and past `max_chars`
the watch gives up so that its followers go to Postgres instead). A follower
joining reads its backlog from that text, then everything new as one delta per wake-up: the text is
a list of pieces with their end offsets, each follower keeps only its own offset, and each change
wakes every follower waiting. A slow follower gets all it missed as one delta. The
watch ends with `finished`, which every follower gets, or with a failure, which every follower
raises as `LiveReplyLost` after the text it was sent; it is dropped when its last follower leaves.
"""

from __future__ import annotations

import asyncio
import bisect
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable

from prometheus_client import Gauge

from gateway.owner_streams import OwnerStreams
from genservice.replies import convert
from genservice.v1 import genservice_pb2 as pb

# characters of one reply a gateway keeps in memory for its followers
MAX_LIVE_CHARS = 1_000_000
# replies found longer than that, remembered so that their next followers go to Postgres at once
REMEMBERED_TOO_LONG = 1000

Key = tuple[str, str, str]


def _nothing() -> None:
    pass


class LiveReplyLost(Exception):
    """The shared stream ended without `finished`: the follower goes on from what it was sent, elsewhere."""


class _SharedReply:
    """One reply's events from its owner, and the text they have given so far."""

    def __init__(self, max_chars: int) -> None:
        self.followers = 0
        self.too_long = False
        self._max_chars = max_chars
        self._started: pb.ReplyEvent | None = None
        self._finished: pb.ReplyEvent | None = None
        self._failure: Exception | None = None
        self._pieces: list[str] = []
        # the offset just past each piece
        self._ends: list[int] = []
        self._end = 0
        # one future per follower waiting for a change (asyncio.Event.wait looks the running loop up on each call)
        self._loop = asyncio.get_running_loop()
        self._waiters: list[asyncio.Future[None]] = []
        # unwatches it on the owner's stream; set once the watch is sent
        self.unwatch: Callable[[], None] = _nothing
        # called once when it finishes or fails
        self.on_end: Callable[[], None] = _nothing

    @property
    def ended(self) -> bool:
        return self._finished is not None or self._failure is not None

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _change(self) -> None:
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        await waiter

    def apply(self, event: pb.ReplyEvent) -> None:
        """The owner's next event for this reply."""
        if self.ended:
            return
        kind = event.WhichOneof("event")
        if kind == "started":
            self._started = event
        elif kind == "delta":
            try:
                self._append(event.delta)
            except LiveReplyLost as lost:
                self.unwatch()
                self.fail(lost)
                return
        elif kind == "finished":
            self._finished = event
            self.on_end()
        self._notify()

    def fail(self, failure: Exception) -> None:
        """The watch ended without `finished`: every follower raises LiveReplyLost after what it was sent."""
        if self.ended:
            return
        self._failure = failure
        self.on_end()
        self._notify()

    def _append(self, delta: pb.ReplyDelta) -> None:
        if delta.offset != self._end:
            raise LiveReplyLost(f"the owner sent offset {delta.offset} where {self._end} was next")
        if not delta.text:
            return
        self._end += len(delta.text)
        if self._end > self._max_chars:
            self.too_long = True
            raise LiveReplyLost(f"the reply is longer than {self._max_chars} characters, more than is kept here")
        self._pieces.append(delta.text)
        self._ends.append(self._end)

    def _text_after(self, offset: int) -> str:
        first = bisect.bisect_right(self._ends, offset)
        if first == len(self._pieces):
            return ""
        start = self._ends[first] - len(self._pieces[first])
        return "".join(self._pieces[first:])[offset - start :]

    def _lost(self) -> LiveReplyLost:
        failure = self._failure
        lost = LiveReplyLost(f"the owner's stream failed: {failure!r}")
        lost.__cause__ = failure
        return lost

    async def events(self, offset: int) -> AsyncIterator[pb.ReplyEvent]:
        """`started`, the text after `offset` merged as it comes, `finished`; or LiveReplyLost."""
        while self._started is None:
            if self._failure is not None:
                raise self._lost()
            await self._change()
        yield self._started
        sent = offset
        while True:
            text = self._text_after(sent)
            if text:
                yield convert.delta_event(sent, text)
                sent += len(text)
            elif self._finished is not None:
                yield self._finished
                return
            elif self._failure is not None:
                raise self._lost()
            else:
                await self._change()


class LiveReplies:
    """The shared owner streams of one gateway process, by owner, user and message."""

    def __init__(self, owners: OwnerStreams, open_streams: Gauge, max_chars: int = MAX_LIVE_CHARS) -> None:
        self._owners = owners
        self._open_streams = open_streams
        self._max_chars = max_chars
        self._replies: dict[Key, _SharedReply] = {}
        # the owner of each reply watched here, by user and message
        self._owners_of: dict[tuple[str, str], str] = {}
        self._too_long: OrderedDict[Key, None] = OrderedDict()

    def owner_of(self, user_id: str, message_id: str) -> str | None:
        """Where the user's reply runs, when this process watches it now: its next follower needs no query."""
        return self._owners_of.get((user_id, message_id))

    async def follow(self, owner: str, user_id: str, message_id: str, offset: int) -> AsyncIterator[pb.ReplyEvent]:
        """The message's events from `offset`, through the one watch this process keeps on `owner` for it."""
        key = (owner, user_id, message_id)
        if key in self._too_long:
            raise LiveReplyLost(f"the reply is longer than {self._max_chars} characters, more than is kept here")
        reply = self._replies.get(key)
        if reply is None:
            reply = self._open(key)
        reply.followers += 1
        try:
            async for event in reply.events(offset):
                yield event
        finally:
            reply.followers -= 1
            if reply.followers == 0 and not reply.ended:
                reply.unwatch()
                reply.fail(LiveReplyLost("its last follower left"))

    def _open(self, key: Key) -> _SharedReply:
        owner, user_id, message_id = key
        reply = self._replies[key] = _SharedReply(self._max_chars)
        self._owners_of[user_id, message_id] = owner
        self._open_streams.inc()

        def ended() -> None:
            self._open_streams.dec()
            # the next follower of the message opens a watch of its own
            if self._replies.get(key) is reply:
                del self._replies[key]
                del self._owners_of[user_id, message_id]
            if reply.too_long:
                self._too_long[key] = None
                if len(self._too_long) > REMEMBERED_TOO_LONG:
                    self._too_long.popitem(last=False)

        reply.on_end = ended
        reply.unwatch = self._owners.watch(owner, user_id, message_id, 0, reply)
        return reply

    async def close(self) -> None:
        """End every shared reply: its followers go on elsewhere, or end with the process."""
        for reply in list(self._replies.values()):
            reply.fail(LiveReplyLost("the gateway is closing"))
        await self._owners.close()
