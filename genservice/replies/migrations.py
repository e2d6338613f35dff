"""Versioned SQL migrations, applied at start; an advisory lock makes concurrent starts safe."""

from __future__ import annotations

import logging
from importlib import resources

from genservice.replies.database import Pool

log = logging.getLogger(__name__)

# any constant works; it only has to be the same in every process
MIGRATION_LOCK_KEY = 7_205_913_001


def migration_files() -> list[tuple[str, str]]:
    folder = resources.files("genservice.replies") / "migrations"
    names = sorted(item.name for item in folder.iterdir() if item.name.endswith(".sql"))
    return [(name.removesuffix(".sql"), (folder / name).read_text(encoding="utf-8")) for name in names]


async def migrate(pool: Pool) -> None:
    async with pool.connection() as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations"
                " (version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            await conn.commit()
            cursor = await conn.execute("SELECT version FROM schema_migrations")
            applied = {row["version"] for row in await cursor.fetchall()}
            for version, sql in migration_files():
                if version in applied:
                    continue
                async with conn.transaction():
                    await conn.execute(sql.encode())
                    await conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
                log.info("applied migration %s", version)
        finally:
            # the migrations commit before the lock is let go: the next process must find them applied
            await conn.commit()
            await conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
            await conn.commit()
