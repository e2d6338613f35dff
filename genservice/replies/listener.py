"""One LISTEN connection per process, dispatching notifications to the subscriptions that want them.

Notifications are wake-ups; the database is the truth. When the connection is lost the hub
reconnects with backoff, listens again and tells every subscription to re-read from Postgres.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from types import TracebackType

import psycopg
from psycopg import AsyncConnection, sql

from genservice.replies.background import FAILURES_BEFORE_UNHEALTHY
from genservice.replies.backoff import Backoff
from genservice.replies.database import connection_kwargs
from genservice.replies.notices import CHANNEL, Notice

log = logging.getLogger(__name__)

QUEUE_LIMIT = 256
DROPPED_LOG_EVERY = 1000


class Subscription:
    """Notices for one message, bounded: a subscriber that falls behind is told to re-read instead."""

    def __init__(self, message_id: str, wants: Callable[[Notice], bool] | None = None) -> None:
        self.message_id = message_id
        self._wants = wants
        self._notices: deque[Notice] = deque()
        self._resync = False
        self._wake = asyncio.Event()

    def _push(self, notice: Notice) -> None:
        if self._wants is not None and not self._wants(notice):
            return
        if len(self._notices) >= QUEUE_LIMIT:
            self._notices.clear()
            self._resync = True
        else:
            self._notices.append(notice)
        self._wake.set()

    def _mark_resync(self) -> None:
        self._notices.clear()
        self._resync = True
        self._wake.set()

    async def wait(self, idle: float | None = None) -> list[Notice] | None:
        """The notices since the last call, or None when the subscriber must re-read Postgres.

        After `idle` seconds without a notice it is None too: a lost notification costs latency, never a hang.
        """
        try:
            async with asyncio.timeout(idle):
                await self._wake.wait()
        except TimeoutError:
            return None
        self._wake.clear()
        if self._resync:
            self._resync = False
            self._notices.clear()
            return None
        notices = list(self._notices)
        self._notices.clear()
        return notices


class ListenerHub:
    def __init__(self, url: str, application_name: str) -> None:
        self._url = url
        self._application_name = application_name
        self._subscriptions: dict[str, set[Subscription]] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self.notices_received = 0
        self.notices_dropped = 0
        # seconds from a NOTIFY being written to its arrival here, summed over the notices that say when
        self.lag_seconds_sum = 0.0
        self.lag_count = 0
        # unexpected failures since a notification was last dispatched
        self.failures = 0

    @property
    def connected(self) -> bool:
        return self._ready.is_set() and self._task is not None and not self._task.done()

    @property
    def healthy(self) -> bool:
        """Listening, or reconnecting after an outage; not when it keeps failing on something unexpected."""
        return self._task is not None and not self._task.done() and self.failures < FAILURES_BEFORE_UNHEALTHY

    @property
    def subscription_count(self) -> int:
        return sum(len(subs) for subs in self._subscriptions.values())

    async def __aenter__(self) -> ListenerHub:
        self._task = asyncio.create_task(self._run(), name="listener-hub")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self._ready.wait()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @contextlib.asynccontextmanager
    async def subscribe(
        self, message_id: str, wants: Callable[[Notice], bool] | None = None
    ) -> AsyncIterator[Subscription]:
        """Notices for the message: all, or those that `wants`; a re-read is always told."""
        subscription = Subscription(message_id, wants)
        self._subscriptions.setdefault(message_id, set()).add(subscription)
        try:
            yield subscription
        finally:
            subs = self._subscriptions.get(message_id)
            if subs is not None:
                subs.discard(subscription)
                if not subs:
                    del self._subscriptions[message_id]

    async def _run(self) -> None:
        backoff = Backoff()
        while True:
            try:
                async with await AsyncConnection.connect(
                    self._url, autocommit=True, **connection_kwargs(self._application_name)
                ) as conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
                    if backoff.retrying:
                        log.warning("listening again")
                    self._ready.set()
                    backoff.reset()
                    # whatever happened while we were not listening is only in the database now
                    self._resync_all()
                    async for notify in conn.notifies():
                        self._dispatch(notify.payload)
            except psycopg.Error as exc:
                # one warning per outage, not one per attempt
                level = logging.WARNING if self._ready.is_set() or not backoff.retrying else logging.DEBUG
                log.log(level, "listener connection lost (%s); reconnecting with backoff", type(exc).__name__)
            except Exception:
                self.failures += 1
                log.exception("the listener failed unexpectedly; listening again")
            self._ready.clear()
            self._resync_all()
            await backoff.wait()

    def _dispatch(self, payload: str) -> None:
        notice = Notice.decode(payload)
        if notice is None:
            self.notices_dropped += 1
            # one line per so many, so that a flood of junk cannot flood the log
            if self.notices_dropped % DROPPED_LOG_EVERY == 1:
                log.warning(
                    "dropped a payload on %s that is not a notice (%d so far): %r",
                    CHANNEL,
                    self.notices_dropped,
                    payload[:80],
                )
            return
        self.failures = 0
        self.notices_received += 1
        if notice.sent_at is not None:
            self.lag_seconds_sum += max(time.time() - notice.sent_at, 0.0)
            self.lag_count += 1
        for subscription in self._subscriptions.get(notice.message_id, ()):
            subscription._push(notice)

    def _resync_all(self) -> None:
        for subs in self._subscriptions.values():
            for subscription in subs:
                subscription._mark_resync()
