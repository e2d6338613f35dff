"""Reads of one message that wait at the same time share one query.

One SharedReads is built per process at start, over its pool. When many readers ask for the same
message at once (a stampede of tabs reconnecting, every follower of a reply woken by one notice),
the first read queues for a pooled connection and the others join it, whatever their offsets: the
read is sent from the lowest offset any of them asked for, and each takes its own part of the
answer. Joining ends when that read gets its connection: a read already sent may have taken its
snapshot before the commit that woke a later reader, so a later reader starts a read of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Generic, TypeVar

from psycopg import AsyncConnection
from psycopg.rows import DictRow

from genservice.replies import queries
from genservice.replies.database import Pool
from genservice.replies.records import TextAfter

# what is read, user id, message id
_Key = tuple[str, str, str]
Answer = TypeVar("Answer")
# a query on one connection from an offset
Query = Callable[[AsyncConnection[DictRow], int], Awaitable[Answer]]


class _Read(Generic[Answer]):
    """One query, joinable until it has its connection; sent from the lowest offset its readers want."""

    def __init__(self, pool: Pool, key: _Key, offset: int, query: Query[Answer], joinable: dict[_Key, _Read[object]]):
        self.key = key
        self.offset = offset
        self.readers = 0
        self._joinable = joinable
        self.task = asyncio.ensure_future(self._send(pool, query))
        self.task.add_done_callback(self.close)

    async def _send(self, pool: Pool, query: Query[Answer]) -> Answer:
        async with pool.connection() as conn:
            self.close()
            return await query(conn, self.offset)

    def close(self, *_: object) -> None:
        """No reader joins this read any more."""
        if self._joinable.get(self.key) is self:
            del self._joinable[self.key]


class SharedReads:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        # reads not yet sent, which a reader of the same message may still join
        self._joinable: dict[_Key, _Read[object]] = {}

    async def read_after(self, user_id: str, message_id: str, offset: int) -> TextAfter:
        """queries.read_after, shared with every reader of the message that asks before it is sent."""

        def query(conn: AsyncConnection[DictRow], at: int) -> Awaitable[TextAfter]:
            return queries.read_after(conn, user_id, message_id, at)

        read, answer = await self._shared(("text", user_id, message_id), offset, query)
        # the read's text starts at its offset, at or before this reader's
        return replace(answer, text=answer.text[offset - read.offset :])

    async def live_owner(self, user_id: str, message_id: str) -> str | None:
        """queries.live_owner, shared with every reader of the message that asks before it is sent."""

        def query(conn: AsyncConnection[DictRow], _: int) -> Awaitable[str | None]:
            return queries.live_owner(conn, user_id, message_id)

        return (await self._shared(("owner", user_id, message_id), 0, query))[1]

    async def _shared(self, key: _Key, offset: int, query: Query[Answer]) -> tuple[_Read[Answer], Answer]:
        read = self._joinable.get(key)
        if read is None:
            read = self._joinable[key] = _Read(self.pool, key, offset, query, self._joinable)
        else:
            read.offset = min(read.offset, offset)
        read.readers += 1
        try:
            answer = await asyncio.shield(read.task)
            return read, answer  # type: ignore[return-value]
        finally:
            read.readers -= 1
            if read.readers == 0 and not read.task.done():
                # every reader left: the read is cancelled, and nobody may join it now
                read.close()
                read.task.cancel()
