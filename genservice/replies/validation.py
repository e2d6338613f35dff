"""Validating the ids and text that callers send."""

from __future__ import annotations

import uuid

from genservice.replies.errors import InvalidArgument


def parse_id(value: str, field: str) -> str:
    """The canonical form of a UUID id, or INVALID_ARGUMENT naming the field."""
    if not value:
        raise InvalidArgument(f"{field} is required")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidArgument(f"{field} is not a valid id: {value[:64]!r}") from None


def parse_offset(offset: int) -> int:
    """A character offset into a message's text."""
    if offset < 0:
        raise InvalidArgument(f"offset must be 0 or more, got {offset}")
    return offset


MAX_KEY_CHARS = 200


def bounded_text(value: str, field: str) -> str:
    """A short free-form field (model name, request id): Postgres text holds no NUL."""
    if len(value) > MAX_KEY_CHARS:
        raise InvalidArgument(f"{field} is longer than {MAX_KEY_CHARS} characters")
    if "\x00" in value:
        raise InvalidArgument(f"{field} contains a NUL character")
    return value


def require_user(user_id: str) -> str:
    if not user_id or not user_id.strip():
        raise InvalidArgument("user_id is required")
    return bounded_text(user_id, "user_id")


def require_content(content: str, max_chars: int) -> str:
    if not content.strip():
        raise InvalidArgument("content is empty")
    if len(content) > max_chars:
        raise InvalidArgument(f"content is {len(content)} characters; the limit is {max_chars}")
    if "\x00" in content:
        raise InvalidArgument("content contains a NUL character")
    return content
