"""Processes that start at once on a fresh database migrate it once, and none fails."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from genservice.replies.database import open_pool
from genservice.replies.migrations import migrate, migration_files


async def administer(database_url: str, statement: sql.Composed) -> None:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(statement)


async def test_concurrent_starts_on_a_fresh_database_each_find_the_schema_migrated(database_url: str) -> None:
    name = f"fresh_{uuid.uuid4().hex[:12]}"
    await administer(database_url, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    fresh = make_conninfo(database_url, dbname=name)
    try:
        async with open_pool(fresh, "tests-migrate-a", 1) as first, open_pool(fresh, "tests-migrate-b", 1) as second:
            await asyncio.gather(*(migrate(opened) for opened in (first, second, first, second)))
            async with first.connection() as conn:
                cursor = await conn.execute("SELECT version FROM schema_migrations ORDER BY version")
                applied = [row["version"] for row in await cursor.fetchall()]
        assert applied == [version for version, _ in migration_files()]
    finally:
        await administer(database_url, sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
