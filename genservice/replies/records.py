"""What a message and a conversation are once read from Postgres: typed, frozen records."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from psycopg.rows import DictRow


class Status(StrEnum):
    """A message's status, spelled as Postgres stores it and as the gateway's JSON shows it."""

    STREAMING = "streaming"
    COMPLETE = "complete"
    ERROR = "error"
    CANCELLED = "cancelled"


class Role(StrEnum):
    USER = "user"
    ASSISTANT = "assistant"


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


@dataclass(frozen=True)
class MessageRecord:
    id: str
    conversation_id: str
    role: Role
    # the text as saved now: all of it once the message has ended, the saves so far while it streams
    content: str
    status: Status
    error: str
    model: str
    finish_reason: str
    usage: Usage | None
    created_at: datetime
    updated_at: datetime

    @property
    def terminal(self) -> bool:
        return self.status is not Status.STREAMING

    @classmethod
    def from_row(cls, row: DictRow) -> MessageRecord:
        usage = None
        if row["total_tokens"] is not None:
            usage = Usage(row["prompt_tokens"] or 0, row["completion_tokens"] or 0, row["total_tokens"])
        return cls(
            id=str(row["id"]),
            conversation_id=str(row["conversation_id"]),
            role=Role(row["role"]),
            content=row["content"],
            status=Status(row["status"]),
            error=row["error"],
            model=row["model"],
            finish_reason=row["finish_reason"],
            usage=usage,
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )


@dataclass(frozen=True)
class ConversationRecord:
    id: str
    title: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class TextAfter:
    """A message's saved text after an offset, read in one snapshot; `final` is the whole record once it ended."""

    message_id: str
    conversation_id: str
    text: str
    final: MessageRecord | None


@dataclass(frozen=True)
class ChatMessage:
    """A message as a chat client knows it: a user message under the client's id, a reply under the server's."""

    id: str
    role: Role
    # as saved now, like MessageRecord.content
    text: str


@dataclass(frozen=True)
class LatestReply:
    """A conversation's newest reply: what a chat resumes or stops."""

    id: str
    status: Status
    # since its last change, by the database's clock
    idle_seconds: float
