"""The save batcher: one task per process writes the pending text of all its generations in one transaction.

Notifying commits are serialised cluster-wide, so their rate must not grow with the number of
generations: text is gathered and written at most SAVE_MAX_DELAY_MS after it came (BUSY_SAVE_DELAY_MS
while the process runs more than BUSY_REPLIES: each save is a row, a NOTIFY and a notice every
listener decodes, and a busy process's followers read its memory, not its saves), or sooner when a
generation has SAVE_EVERY_CHARS pending, but never more than one commit per MIN_COMMIT_SECONDS per
process, however many generations run. Pieces are cut once and resent unchanged after a failure,
so a commit whose outcome was unknown is retried without a gap or a double."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from genservice.replies.backoff import Backoff
from genservice.replies.database import DATABASE_ERRORS, Pool
from genservice.textcut import cut_pieces
from genservice.writes import SavePiece, save_pieces

log = logging.getLogger(__name__)

# 20 notifying commits a second per process at most: one primary (about 800 a second on a 1 ms-flush
# disk) then serves 40 processes
MIN_COMMIT_SECONDS = 0.05


@dataclass
class _Pending:
    # called once when another process ended the message: its generation stops writing
    on_lease_lost: Callable[[], None]
    # offset of the first character not yet cut into a piece
    cut_end: int
    unsent: list[str] = field(default_factory=list)
    unsent_chars: int = 0
    # cut but not yet known to be committed
    pieces: list[SavePiece] = field(default_factory=list)
    renewed_at: float = field(default_factory=time.monotonic)


class SaveBatcher:
    def __init__(
        self,
        pool: Pool,
        owner: str,
        *,
        save_every_chars: int,
        max_delay: float,
        busy_replies: int,
        busy_max_delay: float,
        lease_seconds: float,
    ) -> None:
        self._pool = pool
        self._owner = owner
        self._save_every = save_every_chars
        self._max_delay = max_delay
        self._busy_replies = busy_replies
        self._busy_max_delay = busy_max_delay
        self._lease_seconds = lease_seconds
        self._pending: dict[str, _Pending] = {}
        self._wake = asyncio.Event()
        self.commits = 0

    def track(self, message_id: str, on_lease_lost: Callable[[], None]) -> None:
        self._pending[message_id] = _Pending(on_lease_lost, cut_end=0)

    def forget(self, message_id: str) -> None:
        """The generation ended: its end writes the whole text, pending saves are moot."""
        self._pending.pop(message_id, None)

    def add(self, message_id: str, text: str) -> None:
        pending = self._pending.get(message_id)
        if pending is None:
            return
        pending.unsent.append(text)
        pending.unsent_chars += len(text)
        if pending.unsent_chars >= self._save_every:
            self._wake.set()

    async def run(self) -> None:
        backoff = Backoff()
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            busy = len(self._pending) > self._busy_replies
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(last + (self._busy_max_delay if busy else self._max_delay)):
                    await self._wake.wait()
            await asyncio.sleep(last + MIN_COMMIT_SECONDS - loop.time())
            self._wake.clear()
            last = loop.time()
            try:
                await self.flush()
            except DATABASE_ERRORS as exc:
                delay = backoff.next_delay()
                log.warning("saving failed (%s); retrying in %.1fs", type(exc).__name__, delay)
                await asyncio.sleep(delay)
            else:
                backoff.reset()

    async def flush(self) -> None:
        now = time.monotonic()
        renew_every = self._lease_seconds / 3
        pieces: list[SavePiece] = []
        renew: list[str] = []
        for message_id, pending in self._pending.items():
            if pending.unsent:
                cut = cut_pieces("".join(pending.unsent), pending.cut_end, self._save_every)
                pending.pieces.extend(SavePiece(message_id, start, text) for start, text in cut)
                pending.cut_end += pending.unsent_chars
                pending.unsent.clear()
                pending.unsent_chars = 0
            pieces.extend(pending.pieces)
            if pending.pieces or now - pending.renewed_at >= renew_every:
                renew.append(message_id)
        if not renew:
            return
        held = await save_pieces(self._pool, self._owner, self._lease_seconds, pieces, renew)
        self.commits += 1
        for message_id in renew:
            saved = self._pending.get(message_id)
            if saved is None:
                continue
            if message_id in held:
                saved.pieces.clear()
                saved.renewed_at = now
            else:
                del self._pending[message_id]
                log.warning("message %s: lease lost, this process stops writing to it", message_id)
                saved.on_lease_lost()
