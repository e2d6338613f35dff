"""The pool under a crowd: a wait for a busy pool is a queue bounded by the caller, not an outage."""

from __future__ import annotations

import asyncio

import psycopg
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


async def test_a_connection_the_server_ended_is_replaced_whether_recent_or_idle(database_url: str) -> None:
    async with open_pool(database_url, "tests-checked-pool", max_size=1) as pool:
        first = await _backend_pid(pool)
        assert await _backend_pid(pool) == first
        await _terminate(database_url, first)
        # returned a moment ago: no round trip, but the server's goodbye waits on its socket
        pool.recent_seconds = 60
        second = await _backend_pid(pool)
        assert second != first
        await _terminate(database_url, second)
        # idle: checked with a round trip
        pool.recent_seconds = 0
        assert await _backend_pid(pool) not in (first, second)


async def _backend_pid(pool: Pool) -> int:
    async with pool.connection() as conn:
        cursor = await conn.execute("SELECT pg_backend_pid() AS pid")
        row = await cursor.fetchone()
    assert row is not None
    return int(row["pid"])


async def _terminate(database_url: str, pid: int) -> None:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
