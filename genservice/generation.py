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
from collections.abc import AsyncIterator
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

    def _publish(self) -> None:
        # also the tick's call after an end published everything: then it wakes no one
        self._held = False
        self._published = len(self._parts)
        if self._waiting:
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()

    async def _change(self) -> None:
        self._waiting += 1
        try:
            await self._changed.wait()
        finally:
            self._waiting -= 1

    async def follow(self, offset: int) -> AsyncIterator[tuple[int, str] | MessageRecord]:
        """(offset, text) deltas after `offset`, each all the text there is, then the final record.

        Raises Abandoned when the end is not known here; what it yielded so far is exact. An offset
        past the text so far waits for the text to pass it.
        """
        sent = offset
        parts = len(self._parts)
        backlog = self.text[offset:]
        # characters yet to come that the follower has already
        ahead = max(0, offset - self.length)
        while True:
            if ahead:
                backlog, ahead = backlog[ahead:], max(0, ahead - len(backlog))
            if backlog:
                yield sent, backlog
                sent += len(backlog)
            elif self.final is not None:
                yield self.final
                return
            elif self._abandoned:
                raise Abandoned
            else:
                await self._change()
            # whatever was published while this follower waited or was busy with its last delta (it
            # attached with every piece there was, published or not)
            published = max(parts, self._published)
            backlog = "".join(self._parts[parts:published])
            parts = published
