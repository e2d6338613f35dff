"""Opaque page tokens for ListConversations and ListMessages: keyset positions, base64 so callers ignore them."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import datetime

from genservice.replies.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
# a conversation's messages: most fit on one page, and a page also stops after MESSAGE_PAGE_BYTES of text
DEFAULT_MESSAGE_PAGE_SIZE = 100
MAX_MESSAGE_PAGE_SIZE = 500
MESSAGE_PAGE_BYTES = 1024 * 1024


def page_size(requested: int, default: int = DEFAULT_PAGE_SIZE, maximum: int = MAX_PAGE_SIZE) -> int:
    if requested < 0:
        raise InvalidArgument(f"page_size must be 0 or more, got {requested}")
    return min(requested or default, maximum)


def encode_seq_token(seq: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": seq}).encode()).decode().rstrip("=")


def decode_seq_token(token: str) -> int:
    """The position after which a page of messages starts; 0 for the first page."""
    if not token:
        return 0
    try:
        seq = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))["after"]
    except (ValueError, TypeError, KeyError, binascii.Error):
        raise InvalidArgument("page_token is not valid") from None
    if type(seq) is not int or not 0 <= seq < 2**63:
        raise InvalidArgument("page_token is not valid")
    return seq


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
