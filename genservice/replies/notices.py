"""What a NOTIFY says about a message, and how a follower advances on it without reading Postgres."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

from genservice.replies.records import Status

CHANNEL = "genservice_events"
# far below Postgres' 8,000-byte payload limit; bigger deltas are read from the database
MAX_INLINE_TEXT_BYTES = 4000


@dataclass(frozen=True)
class Notice:
    message_id: str
    status: Status
    # the message's saved length after this change
    end: int
    # the saved text [start, end), when it was small enough to travel in the payload
    start: int | None = None
    text: str | None = None
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
        if self.text is not None and len(self.text.encode()) <= MAX_INLINE_TEXT_BYTES:
            payload.update(o=self.start, t=self.text)
        if self.cancel_requested:
            payload["c"] = 1
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def decode(cls, payload: str) -> Notice | None:
        """None for a payload that is not ours (anyone may NOTIFY on the channel)."""
        try:
            data = json.loads(payload)
            text = data.get("t")
            return cls(
                message_id=str(data["m"]),
                status=Status(data["s"]),
                end=int(data["e"]),
                start=int(data["o"]) if text is not None else None,
                text=str(text) if text is not None else None,
                cancel_requested=bool(data.get("c")),
                sent_at=float(data["ts"]) if "ts" in data else None,
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


def text_after(notices: Sequence[Notice], sent: int) -> str | None:
    """The text the notices carry after offset `sent`, or None when only the database can tell.

    None when a notice has no inline text, leaves a gap after `sent`, or ends the message: the
    follower then reads Postgres, which is the truth.
    """
    pieces: list[str] = []
    for notice in notices:
        if notice.cancel_requested and not notice.terminal:
            continue
        if notice.terminal or notice.text is None or notice.start is None:
            return None
        if notice.end <= sent:
            continue
        if notice.start > sent:
            return None
        piece = notice.text[sent - notice.start :]
        pieces.append(piece)
        sent += len(piece)
    return "".join(pieces)
