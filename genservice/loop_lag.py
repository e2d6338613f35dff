"""How late the process's event loop runs: the live measure of a process past its capacity.

A timer due every CHECK_SECONDS notes how late it fired. A loop that runs late is one with more
work than its core gives it (its own replies, or the machine's other processes), and everything it
serves waits as long: every reader's latency grows with it. The value kept is an average of the
checks' lateness, each check weighing WEIGHT: a steady overload holds it up within a few checks,
while one stall (a garbage collection, a slow import) moves it by a fraction only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

CHECK_SECONDS = 0.05
WEIGHT = 0.2


class LoopLag:
    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        # seconds late, recently
        self.seconds = 0.0
        self._due = self._loop.time() + CHECK_SECONDS
        self._handle = self._loop.call_at(self._due, self._check)

    def _check(self) -> None:
        now = self._loop.time()
        self.seconds += WEIGHT * (now - self._due - self.seconds)
        self._due = now + CHECK_SECONDS
        self._handle = self._loop.call_at(self._due, self._check)

    def close(self) -> None:
        self._handle.cancel()


@contextlib.contextmanager
def watching_loop_lag() -> Iterator[LoopLag]:
    lag = LoopLag()
    try:
        yield lag
    finally:
        lag.close()
