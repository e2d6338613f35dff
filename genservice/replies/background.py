"""A background task owned by an async context manager: started on entry, restarted after a failure, stopped on exit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from genservice.replies.backoff import Backoff

log = logging.getLogger(__name__)


async def _supervise(name: str, work: Callable[[], Awaitable[None]]) -> None:
    backoff = Backoff(first=0.5, cap=10.0)
    while True:
        try:
            await work()
            log.error("%s stopped by itself; restarting it", name)
        except Exception:
            log.exception("%s failed; restarting it", name)
        await backoff.wait()


@contextlib.asynccontextmanager
async def background(name: str, work: Callable[[], Awaitable[None]]) -> AsyncIterator[asyncio.Task[None]]:
    """Run `work` for as long as the block lasts; an unexpected error is logged and `work` starts again."""
    task = asyncio.create_task(_supervise(name, work), name=name)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
