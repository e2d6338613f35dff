"""Capped exponential backoff with full jitter, for every retry loop of both programs.

Jitter spreads the retries of many processes, so that after a Postgres restart they do not all
reconnect in the same instant.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    first: float = 0.1
    cap: float = 2.0
    _ceiling: float = field(init=False)

    def __post_init__(self) -> None:
        self._ceiling = self.first

    @property
    def retrying(self) -> bool:
        """Whether the last attempt failed (a wait was taken since the last reset)."""
        return self._ceiling > self.first

    def next_delay(self) -> float:
        """A random delay up to the current ceiling, which then doubles up to the cap."""
        delay = random.uniform(self._ceiling / 2, self._ceiling)
        self._ceiling = min(self._ceiling * 2, self.cap)
        return delay

    async def wait(self) -> float:
        delay = self.next_delay()
        await asyncio.sleep(delay)
        return delay

    def reset(self) -> None:
        self._ceiling = self.first
