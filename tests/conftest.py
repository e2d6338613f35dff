"""Real things, really started: Postgres, the OpenAI-compatible test model, genservice on a free port."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from genservice.config import GenServiceConfig
from genservice.replies.database import Pool, open_pool, postgres_url
from genservice.replies.migrations import migrate
from genservice.server import running_service
from genservice.v1 import genservice_pb2_grpc as pb_grpc
from tests.support.model_server import ModelServer
from tests.support.postgres_control import pg_ctl


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """DATABASE_URL when set, else an embedded Postgres of the test session's own."""
    data_dir = Path(tmp_path_factory.mktemp("pg"))
    with postgres_url(os.environ.get("DATABASE_URL") or None, data_dir) as url:
        yield url
    if (data_dir / "postmaster.pid").exists():
        # restarted by a test, the server is one the embedded-Postgres package no longer knows to stop
        pg_ctl(data_dir, "stop", "-m", "fast")


@pytest.fixture(scope="session")
async def pool(database_url: str) -> AsyncIterator[Pool]:
    async with open_pool(database_url, "tests") as opened:
        await migrate(opened)
        yield opened


@pytest.fixture(scope="session")
def model_server() -> Iterator[ModelServer]:
    with ModelServer() as server:
        yield server


@pytest.fixture(scope="session")
def genservice_config(database_url: str, model_server: ModelServer) -> GenServiceConfig:
    return GenServiceConfig(
        addr="127.0.0.1:0",
        database_url=database_url,
        openai_base_url=model_server.base_url,
        # longer than any test holds a reply at a gate of the model server
        model_idle_timeout=30.0,
        lease_seconds=3.0,
        model_max_retries=2,
        shutdown_grace_seconds=5.0,
    )


@pytest.fixture(scope="session")
async def genservice_target(genservice_config: GenServiceConfig) -> AsyncIterator[str]:
    async with running_service(genservice_config) as service:
        yield service.target


@pytest.fixture
async def stub(genservice_target: str) -> AsyncIterator[pb_grpc.GenerationServiceStub]:
    async with grpc.aio.insecure_channel(genservice_target) as channel:
        yield pb_grpc.GenerationServiceStub(channel)
