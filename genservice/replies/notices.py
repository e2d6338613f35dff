"""What a NOTIFY says about a message: a hint that carries no text, decoded strictly.

Any role that can connect may LISTEN and NOTIFY on any channel, so a payload carries no reply text
(another role could read it) and nobody acts on one without reading Postgres: a notice only says
"look again". A payload that is not exactly a notice of ours is dropped.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

from genservice.replies.records import Status

CHANNEL = "genservice_events"
# no offset or length goes past this (Postgres integer)
MAX_OFFSET = 2**31 - 1
_REQUIRED = {"m", "s", "e", "ts"}
_OPTIONAL = {"c"}
_STATUSES = {status.value: status for status in Status}
# the form str(uuid.UUID(...)) gives: lower-case hex in 8-4-4-4-12
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass(frozen=True)
class Notice:
    message_id: str
    status: Status
    # the message's saved length after this change
    end: int
    cancel_requested: bool = False
    # unix time the notice was written (a received notice only), for the notification-lag metric
    sent_at: float | None = None

    @property
    def terminal(self) -> bool:
        return self.status is not Status.STREAMING

    def encode(self) -> str:
        payload: dict[str, object] = {
            "m": self.message_id,
            "s": self.status.value,
            "e": self.end,
            "ts": round(time.time(), 3),
        }
        if self.cancel_requested:
            payload["c"] = 1
        return json.dumps(payload, separators=(",", ":"))

    @classmethod
    def decode(cls, payload: str) -> Notice | None:
        """The notice, or None for anything else: strict and total, it never raises."""
        try:
            data = json.loads(payload)
        except (ValueError, RecursionError):
            return None
        if not isinstance(data, dict) or not _REQUIRED <= data.keys() <= _REQUIRED | _OPTIONAL:
            return None
        message_id, status, end, sent_at = data["m"], data["s"], data["e"], data["ts"]
        if not isinstance(message_id, str) or _CANONICAL_UUID.fullmatch(message_id) is None:
            return None
        if not isinstance(status, str) or status not in _STATUSES:
            return None
        if type(end) is not int or not 0 <= end <= MAX_OFFSET:
            return None
        if type(sent_at) not in (int, float) or not math.isfinite(sent_at):
            return None
        if data.get("c", 1) != 1 or type(data.get("c", 1)) is not int:
            return None
        return cls(message_id, _STATUSES[status], end, "c" in data, float(sent_at))


def says_more_than(notices: Sequence[Notice], sent: int) -> bool:
    """Whether the notices claim anything a follower at offset `sent` has not seen: only then is Postgres read."""
    return any(notice.terminal or notice.end > sent for notice in notices)
