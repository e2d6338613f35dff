"""The gateway's tests: a real gateway per module, in front of the session's genservice, and an HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx2
import pytest

from gateway.server import RunningGateway
from tests.support.gateway_harness import gateway_config, http_client, started_gateway


@pytest.fixture(scope="module")
async def gateway(database_url: str, genservice_target: str) -> AsyncIterator[RunningGateway]:
    async with started_gateway(gateway_config(database_url, genservice_target, ping_seconds=0.5)) as running:
        yield running


@pytest.fixture
async def client(gateway: RunningGateway) -> AsyncIterator[httpx2.AsyncClient]:
    async with http_client(gateway) as opened:
        yield opened
