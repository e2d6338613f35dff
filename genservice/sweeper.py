"""The sweeper: ends as ERROR, with their saved text, the messages whose generation's process died."""

from __future__ import annotations

import asyncio
import logging

from genservice import store
from genservice.batcher import DATABASE_ERRORS
from genservice.database import Pool

log = logging.getLogger(__name__)

INTERRUPTED = "the generation was interrupted: the process running it stopped before the reply finished"


async def sweep_forever(pool: Pool, owner: str, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            ended = await store.end_from_saves(pool, "error", INTERRUPTED, sweeper=owner)
        except DATABASE_ERRORS as exc:
            log.warning("sweep failed (%s); next try in %.1fs", type(exc).__name__, interval)
            continue
        for record in ended:
            log.warning("message %s: lease expired, ended ERROR with %d characters", record.id, len(record.content))
