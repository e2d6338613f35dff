"""Reads of one message that wait at the same time share one query.

One SharedReads is built per process at start, over its pool. When many readers ask for a
message's text after the same offset at once (a stampede of tabs reconnecting, every follower of a
reply woken by one notice), the first read queues for a pooled connection and the others join it.
Joining ends when that read gets its connection: a read already sent may have taken its snapshot
before the commit that woke a later reader, so a later reader starts a read of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import cast

from psycopg import AsyncConnection
from psycopg.rows import DictRow

from genservice.replies import queries
from genservice.replies.database import Pool
from genservice.replies.records import TextAfter

# user id, message id, offset
_Key = tuple[str, str, int]


class _Sending:
    """The pool as a query sees it, telling when the query got its connection and so is about to be sent."""

    def __init__(self, pool: Pool, on_sending: Callable[[], None]) -> None:
        self._pool = pool
        self._on_sending = on_sending

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection[DictRow]]:
        async with self._pool.connection() as conn:
            self._on_sending()
            yield conn


class _Read:
    def __init__(self, pool: Pool, key: _Key, joinable: dict[_Key, _Read]) -> None:
        self.key = key
        self.readers = 0
        self._joinable = joinable
        user_id, message_id, offset = key
        # a query uses nothing of its pool but connection()
        sending = cast(Pool, _Sending(pool, self.close))
        self.task = asyncio.ensure_future(queries.read_after(sending, user_id, message_id, offset))
        self.task.add_done_callback(self.close)

    def close(self, *_: object) -> None:
        """No reader joins this read any more."""
        if self._joinable.get(self.key) is self:
            del self._joinable[self.key]


class SharedReads:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        # reads not yet sent, which a reader of the same text may still join
        self._joinable: dict[_Key, _Read] = {}

    async def read_after(self, user_id: str, message_id: str, offset: int) -> TextAfter:
        """queries.read_after, shared with every reader of the same text that asks before it is sent."""
        key = (user_id, message_id, offset)
        read = self._joinable.get(key)
        if read is None:
            read = self._joinable[key] = _Read(self.pool, key, self._joinable)
        read.readers += 1
        try:
            return await asyncio.shield(read.task)
        finally:
            read.readers -= 1
            if read.readers == 0 and not read.task.done():
                # every reader left: the read is cancelled, and nobody may join it now
                read.close()
                read.task.cancel()
