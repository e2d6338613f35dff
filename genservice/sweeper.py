"""The sweeper: ends as ERROR, with their saved text, the messages whose generation's process died."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from genservice.replies import queries
from genservice.replies.database import DATABASE_ERRORS, Pool
from genservice.writes import end_expired

log = logging.getLogger(__name__)

INTERRUPTED = "the generation was interrupted: the process running it stopped before the reply finished"


async def sweep_forever(
    pool: Pool, owner: str, running: Callable[[], Sequence[str]], interval: float, lease_seconds: float
) -> None:
    """Every `interval`, end the streaming messages whose lease expired, but those this process is running.

    A message of this process's own whose generation is gone (an orphan) is swept like any other.

    After the database was unreachable the sweeper waits one lease before it sweeps again: the
    owners, cut off like everyone else, get that long to renew their leases once it is back.
    """
    reachable_since = time.monotonic()
    while True:
        await asyncio.sleep(interval)
        if time.monotonic() - reachable_since < lease_seconds:
            try:
                await queries.ping(pool)
            except DATABASE_ERRORS:
                reachable_since = time.monotonic()
            continue
        try:
            ended = await end_expired(pool, owner, running(), INTERRUPTED)
        except DATABASE_ERRORS as exc:
            log.warning("sweep failed (%s); next try in %.1fs", type(exc).__name__, interval)
            reachable_since = time.monotonic()
            continue
        for record in ended:
            log.warning("message %s: lease expired, ended ERROR with %d characters", record.id, len(record.content))
