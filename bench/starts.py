"""Starts of a reply per second (`make bench`): the start's round trips under a crowd on one event loop.

    python -m bench.starts [--workers 200] [--seconds 5] [--streams 300]

N workers on one pool of genservice's size each start replies for a while, as genservice does them
(a request key, the per-user limit): in new conversations, then in conversations of their own, each
start followed by the reply's end so the next is not refused as busy. Meanwhile `--streams` tasks keep
the event loop busy as streaming replies do (50 wake-ups a second, each a token's worth of work), so
each round trip waits for a turn of a busy loop. Reports starts per second and the p50/p99 of one start.
Postgres is DATABASE_URL when set, else an embedded one in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from genservice import writes
from genservice.config import GenServiceConfig
from genservice.replies.database import Pool, open_pool, postgres_url
from genservice.replies.migrations import migrate
from genservice.replies.records import Status

OWNER = "bench"
TOKENS_PER_SECOND = 50
TOKEN_WORK_SECONDS = 50e-6
LIMIT = GenServiceConfig.max_active_replies_per_user


async def start(pool: Pool, user_id: str, conversation_id: str | None) -> writes.StartedReply:
    return await writes.start_reply(
        pool,
        user_id=user_id,
        conversation_id=conversation_id,
        content="bench",
        model="bench",
        request_id=str(uuid.uuid4()),
        owner=OWNER,
        lease_seconds=600,
        max_active_per_user=LIMIT,
    )


async def worker(pool: Pool, in_conversation: bool, until: float, latencies: list[float]) -> None:
    user_id = str(uuid.uuid4())
    conversation_id = None
    while time.monotonic() < until:
        began = time.monotonic()
        started = await start(pool, user_id, conversation_id)
        latencies.append(time.monotonic() - began)
        await writes.finish_reply(pool, started.assistant.id, OWNER, "ok", writes.Ending(Status.COMPLETE))
        if in_conversation:
            conversation_id = started.conversation_id


async def stream(until: float) -> None:
    while time.monotonic() < until:
        await asyncio.sleep(1 / TOKENS_PER_SECOND)
        busy_until = time.perf_counter() + TOKEN_WORK_SECONDS
        while time.perf_counter() < busy_until:
            pass


async def measure(pool: Pool, workers: int, streams: int, seconds: float, in_conversation: bool) -> str:
    latencies: list[float] = []
    until = time.monotonic() + seconds
    await asyncio.gather(
        *(worker(pool, in_conversation, until, latencies) for _ in range(workers)),
        *(stream(until) for _ in range(streams)),
    )
    p50, p99 = (statistics.quantiles(latencies, n=100)[i] * 1000 for i in (49, 98))
    where = "in a conversation" if in_conversation else "new conversation"
    return f"  {where}: {len(latencies) / seconds:6.0f} starts/s, p50 {p50:6.1f} ms, p99 {p99:6.1f} ms"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--streams", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data, postgres_url(os.environ.get("DATABASE_URL"), Path(data)) as url:
        async with open_pool(url, "bench", max_size=GenServiceConfig.pool_size) as pool:
            await migrate(pool)
            sys.stdout.write(f"{args.workers} workers start for {args.seconds:g} s beside {args.streams} streams:\n")
            for in_conversation in (False, True):
                line = await measure(pool, args.workers, args.streams, args.seconds, in_conversation)
                sys.stdout.write(line + "\n")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main())
