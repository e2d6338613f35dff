"""One reply being generated: its text so far, the callers that follow it, and its stop signal.

A caller's cancellation ends its subscription and nothing else. A stop is an event the runner waits
on beside the model's stream; the first reason given wins.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from enum import Enum

from genservice.replies.records import MessageRecord, Role
from genservice.writes import StartedReply

SUBSCRIBER_QUEUE_LIMIT = 512


class StopReason(Enum):
    # a user asked to stop: the message ends CANCELLED with its text
    CANCELLED = "cancelled"
    # the message was ended by another process: this one writes nothing more to it
    LEASE_LOST = "lease_lost"
    # the service is shutting down and the grace period is over: the message ends ERROR with its text
    SHUTDOWN = "shutdown"


class FellBehind(Exception):
    """A subscriber's queue overflowed; it goes on from Postgres."""


@dataclass(eq=False)
class _Subscriber:
    # text, the final record, or None: "go on from Postgres"
    queue: asyncio.Queue[str | MessageRecord | None] = field(
        default_factory=lambda: asyncio.Queue(SUBSCRIBER_QUEUE_LIMIT)
    )
    behind: bool = False


class Generation:
    def __init__(self, reply: StartedReply) -> None:
        self.message_id = reply.assistant.id
        self.conversation_id = reply.conversation_id
        self.model = reply.assistant.model
        self.history: list[tuple[Role, str]] = reply.history
        self._parts: list[str] = []
        self.length = 0
        self.final: MessageRecord | None = None
        self._subscribers: set[_Subscriber] = set()
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
        self._publish(text)

    def end(self, record: MessageRecord) -> None:
        self.final = record
        self._publish(record)

    def abandon(self) -> None:
        """The end is not known here (the message ended elsewhere): followers go on from Postgres."""
        for subscriber in self._subscribers:
            subscriber.behind = True
            with contextlib.suppress(asyncio.QueueFull):
                subscriber.queue.put_nowait(None)

    def _publish(self, item: str | MessageRecord) -> None:
        for subscriber in self._subscribers:
            if subscriber.behind:
                continue
            try:
                subscriber.queue.put_nowait(item)
            except asyncio.QueueFull:
                # never slow the generation: this one reads from Postgres from now on
                subscriber.behind = True

    @contextlib.contextmanager
    def _subscribed(self) -> Iterator[_Subscriber]:
        subscriber = _Subscriber()
        self._subscribers.add(subscriber)
        try:
            yield subscriber
        finally:
            self._subscribers.discard(subscriber)

    async def follow(self, offset: int) -> AsyncIterator[tuple[int, str] | MessageRecord]:
        """(offset, text) deltas after `offset` from memory, then live, then the final record.

        Raises FellBehind when this follower was too slow; what it got so far is exact.
        """
        with self._subscribed() as subscriber:
            sent = offset
            backlog = self.text[offset:]
            if backlog:
                yield sent, backlog
                sent += len(backlog)
            if self.final is not None:
                yield self.final
                return
            while True:
                if subscriber.behind and subscriber.queue.empty():
                    raise FellBehind
                item = await subscriber.queue.get()
                if item is None:
                    raise FellBehind
                if isinstance(item, MessageRecord):
                    yield item
                    return
                yield sent, item
                sent += len(item)
