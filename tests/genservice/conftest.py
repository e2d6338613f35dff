"""genservice's tests: a database of a test's own, for the tests that break things on purpose; a genservice that
wants a token."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from genservice.config import GenServiceConfig
from genservice.server import running_service

TOKEN = "a-shared-secret-of-the-tests"


@pytest.fixture
async def fresh_database(database_url: str) -> AsyncIterator[str]:
    """A database of this test's own: the test may refuse connections to it or drop it."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as admin:
        await admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield make_conninfo(database_url, dbname=name)
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as admin:
        await admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="module")
async def guarded(genservice_config: GenServiceConfig) -> AsyncIterator[str]:
    """The target of a genservice started with GENSERVICE_TOKEN set to TOKEN."""
    async with running_service(dataclasses.replace(genservice_config, token=TOKEN)) as service:
        yield service.target
