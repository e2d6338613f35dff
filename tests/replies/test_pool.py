"""The pool under a crowd: a wait for a busy pool is a queue bounded by the caller, not an outage."""

from __future__ import annotations

import asyncio

import pytest
from psycopg_pool import PoolTimeout

from genservice.replies.database import Pool, open_pool


async def test_a_wait_for_a_busy_pool_outlasts_the_pool_timeout_and_gets_a_connection(database_url: str) -> None:
    async with open_pool(database_url, "tests-busy-pool", max_size=1) as pool:
        pool.timeout = 0.2
        async with pool.connection() as held:
            waiter = asyncio.create_task(_select_one(pool))
            # the waiter is still queued well past the pool's own timeout: this is a queue, not an outage
            await asyncio.sleep(pool.timeout * 3)
            assert not waiter.done()
            await held.execute("SELECT 1")
        assert await waiter == 1


async def test_a_pool_that_cannot_connect_still_fails_its_wait() -> None:
    async with open_pool("postgresql://nobody@127.0.0.1:9/none", "tests-no-database", max_size=1) as pool:
        pool.timeout = 0.2
        with pytest.raises(PoolTimeout):
            await _select_one(pool)


async def _select_one(pool: Pool) -> int:
    async with pool.connection() as conn:
        cursor = await conn.execute("SELECT 1 AS one")
        row = await cursor.fetchone()
    assert row is not None
    return int(row["one"])
