"""The gateway's ASGI application: routes, error handlers, and a lifespan that opens the resources once."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources as package_files
from pathlib import Path
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from gateway.config import GatewayConfig
from gateway.errors import GENERIC_MESSAGES, ApiError, from_exception
from gateway.metrics import GatewayMetrics
from gateway.relay import Relay
from gateway.resources import open_resources
from gateway.routes import routes
from genservice.replies.errors import ServiceError

log = logging.getLogger(__name__)

HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


@dataclass(frozen=True)
class Gateway:
    app: Starlette
    relay: Relay
    metrics: GatewayMetrics


def static_dir() -> Path:
    return Path(str(package_files.files("gateway") / "static"))


def create_gateway(config: GatewayConfig) -> Gateway:
    metrics = GatewayMetrics(CollectorRegistry(auto_describe=True))
    relay = Relay(config.ping_seconds, metrics)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[Mapping[str, Any]]:
        async with open_resources(config, metrics, relay) as opened:
            yield {"resources": opened}
        log.info("gateway resources closed")

    async def api_error(request: Request, exc: Exception) -> Response:
        error = from_exception(exc)
        metrics.errors.labels(code=error.code).inc()
        return error.response()

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        code = HTTP_CODES.get(status, f"http_{status}")
        detail = exc.detail if isinstance(exc, HTTPException) else GENERIC_MESSAGES[500]
        return ApiError(status, code, detail, getattr(exc, "headers", None)).response()

    async def unexpected_error(request: Request, exc: Exception) -> Response:
        # Starlette re-raises it after this answer, so the server logs the traceback
        metrics.errors.labels(code="internal").inc()
        return ApiError(500, "internal", GENERIC_MESSAGES[500]).response()

    app = Starlette(
        routes=routes(static_dir()),
        lifespan=lifespan,
        exception_handlers={
            ApiError: api_error,
            ServiceError: api_error,
            psycopg.OperationalError: api_error,
            HTTPException: http_error,
            Exception: unexpected_error,
        },
    )
    return Gateway(app=app, relay=relay, metrics=metrics)
