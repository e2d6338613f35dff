"""One reply being generated: its text so far, the callers that follow it, and its stop signal.

A caller's cancellation ends its subscription and nothing else. A stop is an event the runner waits
on beside the model's stream; the first reason given wins.

Followers share the reply's own list of pieces: each remembers how many it has sent, and when it
wakes it takes everything published after that as one delta. A follower that falls behind costs
nothing while it is behind and gets its whole backlog at once; appending a piece never waits for
anyone.

Under load a reply's pieces are published on the process's shared tick (pacing), not one by one;
the end is published at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from enum import Enum

from genservice.pacing import Ticker
from genservice.replies.records import MessageRecord, Role
from genservice.writes import StartedReply


class StopReason(Enum):
    # a user asked to stop: the message ends CANCELLED with its text
    CANCELLED = "cancelled"
    # the message was ended by another process: this one writes nothing more to it
    LEASE_LOST = "lease_lost"
    # the service is shutting down and the grace period is over: the message ends ERROR with its text
    SHUTDOWN = "shutdown"


class Abandoned(Exception):
    """The end is not known here (the message ended elsewhere): the follower goes on from Postgres."""


@dataclass(slots=True)
class Cursor:
    """Where one follower is in a generation's text."""

    # the offset just past the text it was given
    offset: int
    # the pieces it has taken
    parts: int
    # its first take: every piece there was when it attached
    backlog: str | None
    # characters past the text so far that it has already
    ahead: int


class Generation:
    def __init__(self, reply: StartedReply, ticker: Ticker | None = None) -> None:
        self.message_id = reply.assistant.id
        self.user_id = reply.user_id
        self.conversation_id = reply.conversation_id
        self.model = reply.assistant.model
        self.history: list[tuple[Role, str]] = reply.history
        self._parts: list[str] = []
        self.length = 0
        # pieces followers may take: all of them but those held for the ticker's next tick
        self._published = 0
        self._ticker = ticker or Ticker()
        self._held = False
        self.final: MessageRecord | None = None
        self._abandoned = False
        # set and replaced on every change, while someone waits for one
        self._changed = asyncio.Event()
        self._waiting = 0
        # called on every change, beside the event: one gateway's stream of every reply it watches here
        self._listeners: list[Callable[[], None]] = []
        self._stop = asyncio.Event()
        self.stop_reason: StopReason | None = None

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def request_stop(self, reason: StopReason) -> None:
        """Ask the runner to end the model's stream; a later reason never replaces the first."""
        if self.stop_reason is None:
            self.stop_reason = reason
            self._stop.set()

    async def stopped(self) -> StopReason:
        await self._stop.wait()
        assert self.stop_reason is not None
        return self.stop_reason

    def append(self, text: str) -> None:
        self._parts.append(text)
        self.length += len(text)
        if not self._held:
            self._held = self._ticker.hold(self._publish)
            if not self._held:
                self._publish()

    def end(self, record: MessageRecord) -> None:
        self.final = record
        self._publish()

    def abandon(self) -> None:
        """The end is not known here (the message ended elsewhere): followers go on from Postgres."""
        self._abandoned = True
        self._publish()

    @property
    def abandoned(self) -> bool:
        return self._abandoned

    def listen(self, listener: Callable[[], None]) -> None:
        """Call `listener` on every change: new text for followers, the end, or the end abandoned."""
        self._listeners.append(listener)

    def unlisten(self, listener: Callable[[], None]) -> None:
        self._listeners.remove(listener)

    def _publish(self) -> None:
        # also the tick's call after an end published everything: then it wakes no one
        self._held = False
        self._published = len(self._parts)
        if self._waiting:
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()
        for listener in self._listeners:
            listener()

    async def _change(self) -> None:
        self._waiting += 1
        try:
            await self._changed.wait()
        finally:
            self._waiting -= 1

    def cursor(self, offset: int) -> Cursor:
        """A follower's place after `offset`: its first take is every piece there is, published or not."""
        return Cursor(offset, len(self._parts), self.text[offset:], max(0, offset - self.length))

    def take(self, cursor: Cursor) -> str:
        """The text after `cursor` that followers may have now, as one delta; the cursor moves past it."""
        if cursor.backlog is not None:
            text, cursor.backlog = cursor.backlog, None
        else:
            # whatever was published while this follower waited or was busy with its last delta
            published = max(cursor.parts, self._published)
            text = "".join(self._parts[cursor.parts : published])
            cursor.parts = published
        if cursor.ahead:
            # characters yet to come that the follower has already
            text, cursor.ahead = text[cursor.ahead :], max(0, cursor.ahead - len(text))
        cursor.offset += len(text)
        return text

    async def follow(self, offset: int) -> AsyncIterator[tuple[int, str] | MessageRecord]:
        """(offset, text) deltas after `offset`, each all the text there is, then the final record.

        Raises Abandoned when the end is not known here; what it yielded so far is exact. An offset
        past the text so far waits for the text to pass it.
        """
        cursor = self.cursor(offset)
        while True:
            start = cursor.offset
            text = self.take(cursor)
            if text:
                yield start, text
            elif self.final is not None:
                yield self.final
                return
            elif self._abandoned:
                raise Abandoned
            else:
                await self._change()
