"""The standard health service, kept true: SERVING only while every background part of the process works."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from grpc_health.v1 import health, health_pb2

log = logging.getLogger(__name__)

CHECK_EVERY_SECONDS = 0.5


class ServiceHealth:
    def __init__(
        self, servicer: health.aio.HealthServicer, names: Sequence[str], checks: dict[str, Callable[[], bool]]
    ) -> None:
        self._servicer = servicer
        self._names = names
        # what must be true for SERVING, by the name logged when it is not
        self._checks = checks
        self.serving: bool | None = None

    def failing(self) -> list[str]:
        return [name for name, check in self._checks.items() if not check()]

    async def watch(self) -> None:
        """Set the status now, then again whenever a check changes."""
        while True:
            failing = self.failing()
            serving = not failing
            if serving != self.serving:
                if failing:
                    log.error("NOT_SERVING: %s not working", ", ".join(failing))
                elif self.serving is not None:
                    log.info("SERVING again")
                status = (
                    health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
                )
                for name in self._names:
                    await self._servicer.set(name, status)
                self.serving = serving
            await asyncio.sleep(CHECK_EVERY_SECONDS)
