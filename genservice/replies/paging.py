"""Opaque page tokens for ListConversations: a keyset position, base64 so callers do not depend on it."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import datetime

from genservice.replies.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100


def page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument(f"page_size must be 0 or more, got {requested}")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_token(updated_at: datetime, conversation_id: str) -> str:
    raw = json.dumps([updated_at.isoformat(), conversation_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str) -> tuple[datetime, str] | None:
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        moment, conversation_id = json.loads(raw)
        return datetime.fromisoformat(moment), str(uuid.UUID(conversation_id))
    except (ValueError, TypeError, binascii.Error):
        raise InvalidArgument("page_token is not valid") from None
