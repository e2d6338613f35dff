"""Benchmark of the save path (`make bench`): figures as ratios against a baseline measured in the same run.

1. WAL written to save a 100,000-character reply every 200 characters: one appended row per save
   (ours) against rewriting the message (`content = content || delta`, the baseline).
2. Notifying commits and saved characters per second with N generations at once: the process's
   save batcher (ours) against one notifying commit per generation per save (the baseline).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import string
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path

from bench.report import report
from genservice import writes
from genservice.batcher import SaveBatcher
from genservice.config import GenServiceConfig
from genservice.replies.database import Pool, open_pool, postgres_url
from genservice.replies.migrations import migrate
from genservice.replies.notices import CHANNEL

REPLY_CHARS = 100_000
SAVE_EVERY = 200
OWNER = "bench"
log = logging.getLogger("bench")


async def new_reply(pool: Pool) -> str:
    reply = await writes.start_reply(
        pool,
        user_id="bench",
        conversation_id=None,
        content="bench",
        model="bench",
        request_id=None,
        owner=OWNER,
        lease_seconds=600,
    )
    return reply.assistant.id


def text(chars: int) -> str:
    """Text that does not compress, as a model's does not much: TOAST would flatter the baseline."""
    return "".join(random.choices(string.ascii_letters + " ", k=chars))


async def wal_position(pool: Pool) -> str:
    async with pool.connection() as conn:
        row = await (await conn.execute("SELECT pg_current_wal_insert_lsn()::text AS lsn")).fetchone()
    assert row is not None
    return str(row["lsn"])


async def wal_bytes(pool: Pool, work: Awaitable[None]) -> int:
    before = await wal_position(pool)
    await work
    async with pool.connection() as conn:
        cursor = await conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), %s) AS d", (before,))
        row = await cursor.fetchone()
    assert row is not None
    return int(row["d"])


async def save_by_rewriting(pool: Pool, message_id: str) -> None:
    for _ in range(REPLY_CHARS // SAVE_EVERY):
        async with pool.connection() as conn, conn.transaction():
            await conn.execute(
                "UPDATE messages SET content = content || %s WHERE id = %s", (text(SAVE_EVERY), message_id)
            )
            await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, message_id))


async def save_by_appending(pool: Pool, message_id: str) -> None:
    for n in range(REPLY_CHARS // SAVE_EVERY):
        piece = writes.SavePiece(message_id, n * SAVE_EVERY, text(SAVE_EVERY))
        await writes.save_pieces(pool, OWNER, 600, [piece], [])


# each generation writes at a model's pace: 20 characters every 10 ms
PACE_CHARS, PACE_SECONDS = 20, 0.01


async def per_generation_commits(pool: Pool, ids: list[str], seconds: float) -> tuple[int, int]:
    """The baseline: each generation commits its own save and NOTIFY every SAVE_EVERY characters."""
    commits = chars = 0
    deadline = time.monotonic() + seconds

    async def one(message_id: str) -> None:
        nonlocal commits, chars
        offset, pending = 0, ""
        while time.monotonic() < deadline:
            pending += text(PACE_CHARS)
            chars += PACE_CHARS
            if len(pending) >= SAVE_EVERY:
                await writes.save_pieces(pool, OWNER, 600, [writes.SavePiece(message_id, offset, pending)], [])
                offset += len(pending)
                pending = ""
                commits += 1
            await asyncio.sleep(PACE_SECONDS)

    await asyncio.gather(*(one(i) for i in ids))
    return commits, chars


async def batched_commits(pool: Pool, ids: list[str], seconds: float) -> tuple[int, int]:
    defaults = GenServiceConfig()
    batcher = SaveBatcher(
        pool,
        OWNER,
        save_every_chars=SAVE_EVERY,
        max_delay=defaults.save_max_delay,
        busy_replies=defaults.busy_replies,
        busy_max_delay=defaults.busy_save_delay,
        lease_seconds=600,
    )
    for message_id in ids:
        batcher.track(message_id, lambda: None)
    runner = asyncio.create_task(batcher.run())
    chars = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for message_id in ids:
            batcher.add(message_id, text(PACE_CHARS))
            chars += PACE_CHARS
        await asyncio.sleep(PACE_SECONDS)
    runner.cancel()
    return batcher.commits, chars


async def main() -> None:
    with tempfile.TemporaryDirectory() as data, postgres_url(os.environ.get("DATABASE_URL"), Path(data)) as url:
        async with open_pool(url, "bench", max_size=50) as pool:
            await migrate(pool)
            rewrite = await wal_bytes(pool, save_by_rewriting(pool, await new_reply(pool)))
            append = await wal_bytes(pool, save_by_appending(pool, await new_reply(pool)))
            report(f"WAL for a {REPLY_CHARS:,}-char reply saved every {SAVE_EVERY} chars:")
            report(
                f"  rewrite (baseline) {rewrite / 1e6:.2f} MB, append {append / 1e6:.2f} MB,"
                f" ratio {append / rewrite:.3f}"
            )
            report("Notifying commits per second, N generations for 3 s:")
            for n in (1, 10, 50, 200):
                ids = [await new_reply(pool) for _ in range(n)]
                base_commits, base_chars = await per_generation_commits(pool, ids, 3.0)
                ids = [await new_reply(pool) for _ in range(n)]
                ours_commits, ours_chars = await batched_commits(pool, ids, 3.0)
                report(
                    f"  N={n:3d}: per-generation {base_commits / 3:7.0f} commits/s ({base_chars / 3:9.0f} chars/s);"
                    f" batched {ours_commits / 3:5.0f} commits/s ({ours_chars / 3:9.0f} chars/s);"
                    f" commit ratio {ours_commits / base_commits:.3f}"
                )


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main())
