"""Every SQL statement of the product: conversations, messages, saves, leases. Parameterised, always."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import DictRow

from genservice.database import Pool
from genservice.errors import FailedPrecondition, conversation_not_found, message_not_found
from genservice.notices import CHANNEL, Notice

TITLE_CHARS = 80
MESSAGE_COLUMNS = (
    "id, conversation_id, role, content, saved_length, status, error, model, finish_reason,"
    " prompt_tokens, completion_tokens, total_tokens, created_at, updated_at"
)
# a streaming message's text is the concatenation of its saves
SAVED_TEXT = (
    "(SELECT coalesce(string_agg(s.text, '' ORDER BY s.start_offset), '')"
    " FROM message_saves s WHERE s.message_id = m.id)"
)
# the message as saved now: the columns, with a streaming message's content read from its saves
MESSAGE_AS_SAVED = MESSAGE_COLUMNS.replace(
    "content", f"CASE WHEN m.status = 'streaming' THEN {SAVED_TEXT} ELSE m.content END AS content"
)


@dataclass(frozen=True)
class MessageRecord:
    id: str
    conversation_id: str
    role: str
    content: str
    status: str
    error: str
    model: str
    finish_reason: str
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    created_at: datetime
    updated_at: datetime
    # characters saved so far (for an ended message, len(content))
    saved_length: int

    @property
    def terminal(self) -> bool:
        return self.status != "streaming"

    @classmethod
    def from_row(cls, row: DictRow) -> MessageRecord:
        return cls(
            id=str(row["id"]),
            conversation_id=str(row["conversation_id"]),
            role=row["role"],
            content=row["content"],
            status=row["status"],
            error=row["error"],
            model=row["model"],
            finish_reason=row["finish_reason"],
            prompt_tokens=row["prompt_tokens"],
            completion_tokens=row["completion_tokens"],
            total_tokens=row["total_tokens"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            saved_length=row["saved_length"] if row["status"] == "streaming" else len(row["content"]),
        )


@dataclass(frozen=True)
class ConversationRecord:
    id: str
    title: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class StartedReply:
    conversation_id: str
    assistant: MessageRecord
    # the conversation so far, oldest first, as (role, content), the new user message last
    history: list[tuple[str, str]]
    # False: the request_id was seen before and this attaches to that reply
    created: bool


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


@dataclass(frozen=True)
class Ending:
    status: str
    error: str = ""
    finish_reason: str = ""
    usage: Usage | None = None


@dataclass(frozen=True)
class SavePiece:
    message_id: str
    start: int
    text: str

    @property
    def end(self) -> int:
        return self.start + len(self.text)


async def notify(conn: AsyncConnection[DictRow], notices: Sequence[Notice]) -> None:
    if notices:
        await conn.execute(
            "SELECT pg_notify(%s, payload) FROM unnest(%s::text[]) AS payload",
            (CHANNEL, [notice.encode() for notice in notices]),
        )


async def _message_of_user(conn: AsyncConnection[DictRow], user_id: str, message_id: str) -> MessageRecord:
    cursor = await conn.execute(
        f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = %s AND user_id = %s", (message_id, user_id)
    )
    row = await cursor.fetchone()
    if row is None:
        raise message_not_found(message_id)
    return MessageRecord.from_row(row)


async def get_message(pool: Pool, user_id: str, message_id: str) -> MessageRecord:
    """The message as saved now; a streaming one carries its saved text."""
    async with pool.connection() as conn:
        cursor = await conn.execute(
            f"SELECT {MESSAGE_AS_SAVED} FROM messages m WHERE id = %s AND user_id = %s", (message_id, user_id)
        )
        row = await cursor.fetchone()
    if row is None:
        raise message_not_found(message_id)
    return MessageRecord.from_row(row)


async def read_after(pool: Pool, user_id: str, message_id: str, offset: int) -> tuple[MessageRecord, str]:
    """The message and its saved text after `offset`, in one statement (one snapshot).

    While streaming only the saves that reach past `offset` are read, and the record's content is
    left empty: a follower of a long reply reads each character once.
    """
    async with pool.connection() as conn:
        cursor = await conn.execute(
            f"SELECT {MESSAGE_COLUMNS}, tail.start AS tail_start, tail.text AS tail"
            " FROM messages m LEFT JOIN LATERAL ("
            "  SELECT min(s.start_offset) AS start, string_agg(s.text, '' ORDER BY s.start_offset) AS text"
            "  FROM message_saves s WHERE m.status = 'streaming' AND s.message_id = m.id"
            "  AND s.start_offset + length(s.text) > %s) AS tail ON true"
            " WHERE m.id = %s AND m.user_id = %s",
            (offset, message_id, user_id),
        )
        row = await cursor.fetchone()
    if row is None:
        raise message_not_found(message_id)
    record = MessageRecord.from_row(row)
    if record.terminal:
        return record, record.content[offset:]
    if row["tail"] is None:
        return record, ""
    return record, row["tail"][max(offset - row["tail_start"], 0) :]


async def list_messages(pool: Pool, user_id: str, conversation_id: str) -> list[MessageRecord]:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT 1 FROM conversations WHERE id = %s AND user_id = %s", (conversation_id, user_id)
        )
        if await cursor.fetchone() is None:
            raise conversation_not_found(conversation_id)
        cursor = await conn.execute(
            f"SELECT {MESSAGE_AS_SAVED} FROM messages m WHERE conversation_id = %s ORDER BY seq", (conversation_id,)
        )
        return [MessageRecord.from_row(row) for row in await cursor.fetchall()]


async def list_conversations(
    pool: Pool, user_id: str, limit: int, after: tuple[datetime, str] | None
) -> list[ConversationRecord]:
    """The user's conversations, most recently updated first, after a keyset position."""
    query = "SELECT id, title, created_at, updated_at FROM conversations WHERE user_id = %s"
    params: list[Any] = [user_id]
    if after is not None:
        query += " AND (updated_at, id) < (%s, %s)"
        params += [after[0], after[1]]
    query += " ORDER BY updated_at DESC, id DESC LIMIT %s"
    params.append(limit)
    async with pool.connection() as conn:
        cursor = await conn.execute(query.encode(), params)
        rows = await cursor.fetchall()
    return [ConversationRecord(str(r["id"]), r["title"], r["created_at"], r["updated_at"]) for r in rows]


async def streaming_reply_in(pool: Pool, conversation_id: str) -> str | None:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT id FROM messages WHERE conversation_id = %s AND status = 'streaming'", (conversation_id,)
        )
        row = await cursor.fetchone()
    return None if row is None else str(row["id"])


async def start_reply(
    pool: Pool,
    *,
    user_id: str,
    conversation_id: str | None,
    content: str,
    model: str,
    request_id: str | None,
    owner: str,
    lease_seconds: float,
) -> StartedReply:
    """One transaction: the user's message, the assistant message (STREAMING, leased), the request key."""
    async with pool.connection() as conn, conn.transaction():
        if request_id is not None:
            existing = await _reply_for_request(conn, user_id, request_id)
            if existing is not None:
                return StartedReply(existing.conversation_id, existing, [], created=False)
        if conversation_id is None:
            conversation_id = str(uuid.uuid4())
            await conn.execute(
                "INSERT INTO conversations (id, user_id, title) VALUES (%s, %s, %s)",
                (conversation_id, user_id, _title(content)),
            )
        else:
            cursor = await conn.execute(
                "SELECT id FROM conversations WHERE id = %s AND user_id = %s FOR UPDATE", (conversation_id, user_id)
            )
            if await cursor.fetchone() is None:
                raise conversation_not_found(conversation_id)
            cursor = await conn.execute(
                "SELECT id FROM messages WHERE conversation_id = %s AND status = 'streaming'", (conversation_id,)
            )
            busy = await cursor.fetchone()
            if busy is not None:
                raise FailedPrecondition(
                    f"message {busy['id']} is still streaming in conversation {conversation_id}; "
                    "wait for it, cancel it, or send with interrupt"
                )
            await conn.execute(
                "UPDATE conversations SET updated_at = clock_timestamp() WHERE id = %s", (conversation_id,)
            )
        await conn.execute(
            "INSERT INTO messages (id, conversation_id, user_id, role, content, status)"
            " VALUES (%s, %s, %s, 'user', %s, 'complete')",
            (str(uuid.uuid4()), conversation_id, user_id, content),
        )
        cursor = await conn.execute(
            "INSERT INTO messages (id, conversation_id, user_id, role, status, model, lease_owner, lease_expires_at)"
            " VALUES (%s, %s, %s, 'assistant', 'streaming', %s, %s, clock_timestamp() + make_interval(secs => %s))"
            f" RETURNING {MESSAGE_COLUMNS}",
            (str(uuid.uuid4()), conversation_id, user_id, model, owner, lease_seconds),
        )
        row = await cursor.fetchone()
        assert row is not None
        assistant = MessageRecord.from_row(row)
        if request_id is not None:
            cursor = await conn.execute(
                "INSERT INTO request_keys (user_id, request_id, message_id) VALUES (%s, %s, %s)"
                " ON CONFLICT DO NOTHING RETURNING message_id",
                (user_id, request_id, assistant.id),
            )
            if await cursor.fetchone() is None:
                # a concurrent retry committed the same key first: attach to its reply instead
                raise RequestRace()
        cursor = await conn.execute(
            "SELECT role, content FROM messages WHERE conversation_id = %s AND id <> %s"
            " AND (role = 'user' OR content <> '') ORDER BY seq",
            (conversation_id, assistant.id),
        )
        history = [(r["role"], r["content"]) for r in await cursor.fetchall()]
        return StartedReply(conversation_id, assistant, history, created=True)


class RequestRace(Exception):
    """Rolls back a start that lost the race for its request key."""


async def attach_to_request(pool: Pool, user_id: str, request_id: str) -> StartedReply:
    async with pool.connection() as conn:
        existing = await _reply_for_request(conn, user_id, request_id)
    assert existing is not None, "the key was committed by the transaction that won the race"
    return StartedReply(existing.conversation_id, existing, [], created=False)


async def _reply_for_request(conn: AsyncConnection[DictRow], user_id: str, request_id: str) -> MessageRecord | None:
    cursor = await conn.execute(
        "SELECT message_id FROM request_keys WHERE user_id = %s AND request_id = %s", (user_id, request_id)
    )
    row = await cursor.fetchone()
    return None if row is None else await _message_of_user(conn, user_id, str(row["message_id"]))


def _title(content: str) -> str:
    line = " ".join(content.split())
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1] + "…"


async def save_pieces(
    pool: Pool, owner: str, lease_seconds: float, pieces: Sequence[SavePiece], renew: Sequence[str]
) -> set[str]:
    """One transaction for many generations: append the pieces, move saved lengths, renew leases, NOTIFY.

    Idempotent, so a batch whose commit outcome was unknown can be sent again. Returns the ids of
    the messages still leased to `owner`; a message missing from it has ended elsewhere (fencing).
    """
    ends: dict[str, int] = {message_id: 0 for message_id in renew}
    for piece in pieces:
        ends[piece.message_id] = max(ends.get(piece.message_id, 0), piece.end)
    async with pool.connection() as conn, conn.transaction():
        cursor = await conn.execute(
            "UPDATE messages AS m SET saved_length = greatest(m.saved_length, v.saved_end),"
            " lease_expires_at = clock_timestamp() + make_interval(secs => %s), updated_at = clock_timestamp()"
            " FROM unnest(%s::uuid[], %s::int[]) AS v(id, saved_end)"
            " WHERE m.id = v.id AND m.lease_owner = %s AND m.status = 'streaming' RETURNING m.id",
            (lease_seconds, list(ends), list(ends.values()), owner),
        )
        held = {str(row["id"]) for row in await cursor.fetchall()}
        kept = [piece for piece in pieces if piece.message_id in held]
        if kept:
            await conn.execute(
                "INSERT INTO message_saves (message_id, start_offset, text)"
                " SELECT * FROM unnest(%s::uuid[], %s::int[], %s::text[]) ON CONFLICT DO NOTHING",
                ([p.message_id for p in kept], [p.start for p in kept], [p.text for p in kept]),
            )
        await notify(conn, [Notice(p.message_id, "streaming", p.end, p.start, p.text) for p in kept])
    return held


async def finish_reply(pool: Pool, message_id: str, owner: str, text: str, ending: Ending) -> MessageRecord | None:
    """One transaction: the whole text and the terminal status commit together, fenced on the lease.

    A stop requested before this commits wins over a completion. None: the lease was gone.
    """
    usage = ending.usage
    async with pool.connection() as conn, conn.transaction():
        cursor = await conn.execute(
            "UPDATE messages SET status = CASE WHEN cancel_requested AND %s = 'complete' THEN 'cancelled' ELSE %s END,"
            " content = %s, saved_length = %s, error = %s, finish_reason = %s,"
            " prompt_tokens = %s, completion_tokens = %s, total_tokens = %s,"
            " lease_owner = NULL, lease_expires_at = NULL, updated_at = clock_timestamp()"
            f" WHERE id = %s AND lease_owner = %s AND status = 'streaming' RETURNING {MESSAGE_COLUMNS}",
            (
                ending.status,
                ending.status,
                text,
                len(text),
                ending.error,
                ending.finish_reason,
                usage.prompt_tokens if usage else None,
                usage.completion_tokens if usage else None,
                usage.total_tokens if usage else None,
                message_id,
                owner,
            ),
        )
        row = await cursor.fetchone()
        if row is None:
            return None
        record = MessageRecord.from_row(row)
        await _after_end(conn, [record])
    return record


async def end_from_saves(
    pool: Pool, status: str, error: str, *, message_id: str | None = None, sweeper: str | None = None
) -> list[MessageRecord]:
    """End messages whose owner cannot: with their saved text, as `status`.

    With message_id: that message, if still streaming (a stop whose owner did not answer).
    With sweeper: every streaming message whose lease expired, but the sweeper's own (it is alive).
    """
    if message_id is not None:
        condition = "m.id = %s"
        params: list[Any] = [status, error, message_id]
    else:
        condition = "m.lease_expires_at < clock_timestamp() AND m.lease_owner IS DISTINCT FROM %s"
        params = [status, error, sweeper]
    async with pool.connection() as conn, conn.transaction():
        cursor = await conn.execute(
            f"UPDATE messages AS m SET status = %s, error = %s, content = {SAVED_TEXT},"
            " lease_owner = NULL, lease_expires_at = NULL, updated_at = clock_timestamp()"
            f" WHERE {condition} AND m.status = 'streaming' RETURNING {MESSAGE_COLUMNS}".encode(),
            params,
        )
        records = [MessageRecord.from_row(row) for row in await cursor.fetchall()]
        await _after_end(conn, records)
    return records


async def _after_end(conn: AsyncConnection[DictRow], records: Sequence[MessageRecord]) -> None:
    if not records:
        return
    ids = [record.id for record in records]
    await conn.execute("DELETE FROM message_saves WHERE message_id = ANY(%s::uuid[])", (ids,))
    await conn.execute(
        "UPDATE conversations SET updated_at = clock_timestamp() WHERE id = ANY(%s::uuid[])",
        ([record.conversation_id for record in records],),
    )
    await notify(conn, [Notice(record.id, record.status, len(record.content)) for record in records])


async def request_cancel(pool: Pool, user_id: str, message_id: str) -> MessageRecord:
    """Record a stop for the owner to hear, wherever it runs."""
    async with pool.connection() as conn, conn.transaction():
        record = await _message_of_user(conn, user_id, message_id)
        if record.terminal or record.role != "assistant":
            return record
        await conn.execute("UPDATE messages SET cancel_requested = true WHERE id = %s", (message_id,))
        await notify(conn, [Notice(message_id, "streaming", record.saved_length, cancel_requested=True)])
    return record


async def stop_state(pool: Pool, message_id: str) -> tuple[bool, bool]:
    """(ended, stop requested) for a running generation's message: what its owner must know after a resync."""
    async with pool.connection() as conn:
        cursor = await conn.execute("SELECT status, cancel_requested FROM messages WHERE id = %s", (message_id,))
        row = await cursor.fetchone()
    if row is None:
        return True, False
    return row["status"] != "streaming", bool(row["cancel_requested"])


async def ping(pool: Pool) -> None:
    async with pool.connection() as conn:
        await conn.execute("SELECT 1")
