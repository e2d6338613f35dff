"""One shared tick on which a busy process publishes its replies' new text.

Each caller's message costs the owner a write on its gRPC connection (at 200 streams a quarter of
genservice was the `sendmsg` of those writes), the gateway a read and the browser's socket a write,
about the same whatever its length. While the process is busy, new text waits for the next tick,
so each stream carries one merged delta per interval, and every reply's writes start in the same
turn of the event loop, where gRPC sends those for one connection together.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


def unpaced() -> float:
    return 0.0


class Ticker:
    def __init__(self, interval: Callable[[], float] = unpaced) -> None:
        # seconds between ticks now; 0: nothing waits
        self._interval = interval
        self._waiting: list[Callable[[], None]] = []
        self._tick: asyncio.TimerHandle | None = None

    def hold(self, publish: Callable[[], None]) -> bool:
        """Call `publish` on the next tick; False (and nothing held) when the process is not busy."""
        interval = self._interval()
        if not interval:
            return False
        self._waiting.append(publish)
        if self._tick is None:
            self._tick = asyncio.get_running_loop().call_later(interval, self._publish_all)
        return True

    def _publish_all(self) -> None:
        self._tick = None
        waiting, self._waiting = self._waiting, []
        for publish in waiting:
            publish()
