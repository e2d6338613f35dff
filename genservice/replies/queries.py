"""Every read of the product's tables: messages, conversations, saved text. Parameterised; nothing here writes."""

from __future__ import annotations

from datetime import datetime

from psycopg import AsyncConnection, sql
from psycopg.rows import DictRow

from genservice.replies.database import Pool
from genservice.replies.errors import conversation_not_found, message_not_found
from genservice.replies.records import (
    ChatMessage,
    ConversationRecord,
    LatestReply,
    MessagePage,
    MessageRecord,
    Role,
    Status,
    TextAfter,
)

MESSAGE_COLUMNS = sql.SQL(
    "m.id, m.conversation_id, m.role, m.content, m.status, m.error, m.model, m.finish_reason,"
    " m.prompt_tokens, m.completion_tokens, m.total_tokens, m.created_at, m.updated_at"
)
# a streaming message's text is the concatenation of its saves
SAVED_TEXT = sql.SQL(
    "(SELECT coalesce(string_agg(s.text, '' ORDER BY s.start_offset), '')"
    " FROM message_saves s WHERE s.message_id = m.id)"
)
# a message's text as saved now: a streaming message's is read from its saves
CONTENT_AS_SAVED = sql.SQL("CASE WHEN m.status = 'streaming' THEN {saved} ELSE m.content END").format(saved=SAVED_TEXT)
MESSAGE_AS_SAVED = sql.SQL(
    "m.id, m.conversation_id, m.role, {content} AS content, m.status, m.error, m.model, m.finish_reason,"
    " m.prompt_tokens, m.completion_tokens, m.total_tokens, m.created_at, m.updated_at"
).format(content=CONTENT_AS_SAVED)


async def message_of_user(conn: AsyncConnection[DictRow], user_id: str, message_id: str) -> MessageRecord:
    """The message as saved now, on a connection the caller holds (inside its transaction)."""
    cursor = await conn.execute(
        sql.SQL("SELECT {} FROM messages m WHERE m.id = %s AND m.user_id = %s").format(MESSAGE_AS_SAVED),
        (message_id, user_id),
    )
    row = await cursor.fetchone()
    if row is None:
        raise message_not_found(message_id)
    return MessageRecord.from_row(row)


async def get_message(pool: Pool, user_id: str, message_id: str) -> MessageRecord:
    """The message as saved now; a streaming one carries its saved text."""
    async with pool.connection() as conn:
        return await message_of_user(conn, user_id, message_id)


async def read_after(conn: AsyncConnection[DictRow], user_id: str, message_id: str, offset: int) -> TextAfter:
    """The message's saved text after `offset`, in one statement (one snapshot).

    While streaming only the save that holds `offset` and those after it are read, found through the
    saves' primary key: a follower of a long reply reads each character about once.
    """
    cursor = await conn.execute(
        sql.SQL(
            "SELECT {columns}, tail.start AS tail_start, tail.text AS tail"
            " FROM messages m LEFT JOIN LATERAL ("
            "  SELECT min(s.start_offset) AS start, string_agg(s.text, '' ORDER BY s.start_offset) AS text"
            "  FROM message_saves s WHERE m.status = 'streaming' AND s.message_id = m.id"
            "  AND s.start_offset >= coalesce((SELECT max(f.start_offset) FROM message_saves f"
            "   WHERE f.message_id = m.id AND f.start_offset <= %s), 0)) AS tail ON true"
            " WHERE m.id = %s AND m.user_id = %s"
        ).format(columns=MESSAGE_COLUMNS),
        (offset, message_id, user_id),
    )
    row = await cursor.fetchone()
    if row is None:
        raise message_not_found(message_id)
    message_id, conversation_id = str(row["id"]), str(row["conversation_id"])
    if row["status"] != "streaming":
        final = MessageRecord.from_row(row)
        return TextAfter(message_id, conversation_id, final.content[offset:], final)
    tail = "" if row["tail"] is None else row["tail"][max(offset - row["tail_start"], 0) :]
    return TextAfter(message_id, conversation_id, tail, None)


async def live_owner(conn: AsyncConnection[DictRow], user_id: str, message_id: str) -> str | None:
    """Where the process running this user's streaming message serves its live text (host:port, as its
    advertises it); None when the message is not streaming, is not the user's, or names no address."""
    cursor = await conn.execute(
        "SELECT owner_addr FROM messages WHERE id = %s AND user_id = %s AND status = 'streaming'",
        (message_id, user_id),
    )
    row = await cursor.fetchone()
    return None if row is None else row["owner_addr"]


async def list_messages(
    pool: Pool, user_id: str, conversation_id: str, limit: int, after_seq: int, max_bytes: int
) -> MessagePage:
    """Up to `limit` messages after position `after_seq`, oldest first, stopping once `max_bytes` of text
    is reached (a page holds at least one message), so no answer grows past the gRPC message limit."""
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT 1 FROM conversations WHERE id = %s AND user_id = %s", (conversation_id, user_id)
        )
        if await cursor.fetchone() is None:
            raise conversation_not_found(conversation_id)
        cursor = await conn.execute(
            sql.SQL(
                "WITH page AS (SELECT m.seq, {columns} FROM messages m"
                "  WHERE m.conversation_id = %s AND m.seq > %s ORDER BY m.seq LIMIT %s),"
                " sized AS (SELECT page.*, count(*) OVER () AS page_rows, coalesce(sum(octet_length(content))"
                "  OVER (ORDER BY seq ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS bytes_before"
                "  FROM page)"
                " SELECT * FROM sized WHERE bytes_before < %s ORDER BY seq"
            ).format(columns=MESSAGE_AS_SAVED),
            (conversation_id, after_seq, limit + 1, max_bytes),
        )
        rows = (await cursor.fetchall())[:limit]
    more = bool(rows) and rows[0]["page_rows"] > len(rows)
    return MessagePage([MessageRecord.from_row(row) for row in rows], rows[-1]["seq"] if more else None)


async def list_conversations(
    pool: Pool, user_id: str, limit: int, after: tuple[datetime, str] | None
) -> list[ConversationRecord]:
    """The user's conversations, most recently updated first, after a keyset position."""
    position = sql.SQL("")
    params: list[object] = [user_id]
    if after is not None:
        position = sql.SQL(" AND (updated_at, id) < (%s, %s)")
        params += [after[0], after[1]]
    params.append(limit)
    query = sql.SQL(
        "SELECT id, title, created_at, updated_at FROM conversations WHERE user_id = %s{position}"
        " ORDER BY updated_at DESC, id DESC LIMIT %s"
    ).format(position=position)
    async with pool.connection() as conn:
        cursor = await conn.execute(query, params)
        rows = await cursor.fetchall()
    return [ConversationRecord(str(r["id"]), r["title"], r["created_at"], r["updated_at"]) for r in rows]


async def chat_messages(pool: Pool, user_id: str, conversation_id: str) -> list[ChatMessage]:
    """A chat's messages, oldest first, without superseded replies; none for an unknown chat."""
    async with pool.connection() as conn:
        cursor = await conn.execute(
            sql.SQL(
                "SELECT coalesce(m.client_id, m.id::text) AS chat_id, m.role, {saved} AS text FROM messages m"
                " WHERE m.conversation_id = %s AND m.user_id = %s AND NOT m.superseded ORDER BY m.seq"
            ).format(saved=CONTENT_AS_SAVED),
            (conversation_id, user_id),
        )
        rows = await cursor.fetchall()
    return [ChatMessage(row["chat_id"], Role(row["role"]), row["text"]) for row in rows]


async def latest_reply(pool: Pool, user_id: str, conversation_id: str) -> LatestReply | None:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT id, status, extract(epoch FROM clock_timestamp() - updated_at)::float8 AS idle FROM messages"
            " WHERE conversation_id = %s AND user_id = %s AND role = 'assistant' AND NOT superseded"
            " ORDER BY seq DESC LIMIT 1",
            (conversation_id, user_id),
        )
        row = await cursor.fetchone()
    return None if row is None else LatestReply(str(row["id"]), Status(row["status"]), row["idle"])


async def streaming_reply_in(pool: Pool, conversation_id: str) -> str | None:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT id FROM messages WHERE conversation_id = %s AND status = 'streaming'", (conversation_id,)
        )
        row = await cursor.fetchone()
    return None if row is None else str(row["id"])


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
