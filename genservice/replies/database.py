"""Where Postgres comes from (DATABASE_URL or the embedded server) and the connection pool."""

from __future__ import annotations

import logging
import math
import select
import time
import warnings
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import psycopg
import psycopg_pool
from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

log = logging.getLogger(__name__)

EMBEDDED_DATA_DIR = Path(".data") / "postgres"
CONNECT_TIMEOUT_SECONDS = 3


class Pool(AsyncConnectionPool[AsyncConnection[DictRow]]):
    """A pool whose waits end by the waiting request's own deadline while the database answers.

    While every connection is lent out, or connections came and went within the pool's timeout, a
    wait past that timeout is a queue, not an outage: it goes on, and the request that waits (its
    gRPC deadline, the gateway's first-event timeout) bounds it. A pool that cannot open or keep
    its connections fails the wait, as before.

    A connection is checked with a round trip before it is lent only if it sat idle, as after Postgres
    restarts every idle connection is dead; one returned under a second ago is lent unless its socket
    has something to read, which is how a server that ended the session (a restart) shows: a start
    makes only a few round trips, and the check was one more on each checkout.
    """

    # a connection back in the pool for less than this was working a moment ago: it is lent out unchecked
    recent_seconds = 1.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, check=self._check_idle, **kwargs)
        # connections handed out and not yet returned, and when one last was handed out or returned
        self._lent = 0
        self._moved_at = -math.inf
        self._returned_at: weakref.WeakKeyDictionary[AsyncConnection[DictRow], float] = weakref.WeakKeyDictionary()

    async def _check_idle(self, conn: AsyncConnection[DictRow]) -> None:
        recent = time.monotonic() - self._returned_at.get(conn, -math.inf) < self.recent_seconds
        if recent and not _readable(conn):
            return
        await AsyncConnectionPool.check_connection(conn)

    def _busy(self) -> bool:
        return self._lent >= self.max_size or time.monotonic() - self._moved_at < self.timeout

    async def getconn(self, timeout: float | None = None) -> AsyncConnection[DictRow]:
        while True:
            try:
                conn = await super().getconn(timeout)
            except psycopg_pool.PoolTimeout:
                if not self._busy():
                    raise
            else:
                self._lent += 1
                self._moved_at = time.monotonic()
                return conn

    async def putconn(self, conn: AsyncConnection[DictRow]) -> None:
        self._lent -= 1
        self._moved_at = self._returned_at[conn] = time.monotonic()
        await super().putconn(conn)


def _readable(conn: AsyncConnection[DictRow]) -> bool:
    # poll, not select: a busy gateway's sockets have numbers past select's 1,024
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    return bool(poller.poll(0))


# what a database that is down or restarting raises, or a session it ended for idling in a transaction (a process
# that was paused); anything else is a bug, not an outage
DATABASE_ERRORS = (psycopg.OperationalError, psycopg.errors.IdleInTransactionSessionTimeout, psycopg_pool.PoolTimeout)


@contextmanager
def postgres_url(database_url: str | None, data_dir: Path = EMBEDDED_DATA_DIR) -> Iterator[str]:
    """DATABASE_URL when set; otherwise an embedded Postgres in data_dir, stopped when its last user leaves."""
    if database_url is not None:
        yield database_url
        return
    data_dir.mkdir(parents=True, exist_ok=True)
    log.info("DATABASE_URL is unset: using the embedded Postgres in %s", data_dir)
    # pgserver narrates every step at INFO
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        # pgserver warns at import when XDG_RUNTIME_DIR is unset, and then uses a fine fallback
        warnings.simplefilter("ignore")
        from pgserver.postgres_server import get_server
    server = get_server(data_dir.resolve(), cleanup_mode="stop")
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()


def connection_kwargs(application_name: str) -> dict[str, Any]:
    return {
        "application_name": application_name,
        "connect_timeout": CONNECT_TIMEOUT_SECONDS,
        # a peer that vanished without a word (a partition) is noticed in about 20 s, not hours
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 2,
    }


@asynccontextmanager
async def open_pool(
    url: str, application_name: str, max_size: int = 10, extra_kwargs: Mapping[str, Any] | None = None
) -> AsyncIterator[Pool]:
    """`extra_kwargs`: more connection parameters (e.g. `options`) for every connection."""
    pool = Pool(
        url,
        min_size=1,
        max_size=max_size,
        kwargs={**connection_kwargs(application_name), **(extra_kwargs or {}), "row_factory": dict_row},
        connection_class=AsyncConnection[DictRow],
        timeout=CONNECT_TIMEOUT_SECONDS,
        open=False,
    )
    await pool.open(wait=False)
    try:
        yield pool
    finally:
        await pool.close()
