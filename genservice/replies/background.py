"""A background task owned by an async context manager: started on entry, restarted after a failure, stopped on exit.

A task that keeps failing is reported unhealthy (its program's health says so) and is still
restarted; one that then runs for a while without failing is healthy again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from genservice.replies.backoff import Backoff

log = logging.getLogger(__name__)

# failures in a row, each before the task ran STABLE_SECONDS, after which it counts as unable to recover
FAILURES_BEFORE_UNHEALTHY = 3
STABLE_SECONDS = 30.0


class Supervised:
    """One supervised background task, and whether it is working."""

    def __init__(self, name: str, work: Callable[[], Awaitable[None]]) -> None:
        self.name = name
        self._work = work
        self.failures = 0

    @property
    def healthy(self) -> bool:
        return self.failures < FAILURES_BEFORE_UNHEALTHY

    async def run(self) -> None:
        backoff = Backoff(first=0.5, cap=10.0)
        while True:
            attempt = asyncio.create_task(self._attempt(), name=self.name)
            try:
                done, _ = await asyncio.wait((attempt,), timeout=STABLE_SECONDS)
                if not done:
                    # it ran long enough to be trusted again
                    self.failures = 0
                    backoff.reset()
                    await attempt
            finally:
                attempt.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await attempt
            self.failures += 1
            if not self.healthy:
                log.error("%s failed %d times in a row: reported unhealthy, still restarting", self.name, self.failures)
            await backoff.wait()

    async def _attempt(self) -> None:
        """One run of the work; returns (never raises) when it failed or stopped by itself."""
        try:
            await self._work()
            log.error("%s stopped by itself; restarting it", self.name)
        except Exception:
            log.exception("%s failed; restarting it", self.name)


@contextlib.asynccontextmanager
async def background(name: str, work: Callable[[], Awaitable[None]]) -> AsyncIterator[Supervised]:
    """Run `work` for as long as the block lasts; an unexpected error is logged and `work` starts again."""
    supervised = Supervised(name, work)
    task = asyncio.create_task(supervised.run(), name=f"{name}-supervisor")
    try:
        yield supervised
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
