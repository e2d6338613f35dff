"""Every write of the product: starting a reply, grouped saves, the end, stops and sweeps, fenced on the lease.

Each write names the lease it holds (`lease_owner` and `status = 'streaming'`): no row updated means
the message ended elsewhere, and its writer stops.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from psycopg import AsyncConnection, AsyncCursor, sql
from psycopg.rows import DictRow

from genservice.replies.database import Pool
from genservice.replies.errors import FailedPrecondition, ResourceExhausted, conversation_not_found
from genservice.replies.notices import CHANNEL, Notice
from genservice.replies.queries import MESSAGE_COLUMNS, SAVED_TEXT, message_of_user
from genservice.replies.records import MessageRecord, Role, Status, Usage

TITLE_CHARS = 80
# the first key of the advisory locks that serialise one user's starts
USER_LOCK_SPACE = 7_205_913
USER_RETRY_SECONDS = 5


@dataclass(frozen=True)
class StartedReply:
    conversation_id: str
    assistant: MessageRecord
    # the conversation so far, oldest first, as (role, content), the new user message last
    history: list[tuple[Role, str]]
    # False: the request_id was seen before and this attaches to that reply
    created: bool
    user_id: str


@dataclass(frozen=True)
class Ending:
    """How a generation ends: the terminal status and what the message records about it."""

    status: Status
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


class RequestRace(Exception):
    """Rolls back a start that lost the race for its request key."""


class ReplyInProgress(FailedPrecondition):
    """A reply is still streaming in the conversation."""


async def notify(conn: AsyncConnection[DictRow], notices: Sequence[Notice]) -> None:
    if notices:
        await conn.execute(
            "SELECT pg_notify(%s, payload) FROM unnest(%b::text[]) AS payload",
            (CHANNEL, [notice.encode() for notice in notices]),
        )


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
    owner_addr: str | None = None,
    chat: bool = False,
    client_message_id: str | None = None,
    regenerate: bool = False,
    max_active_per_user: int = 0,
) -> StartedReply:
    """One transaction: the user's message, the assistant message (STREAMING, leased), the request key.

    chat: `conversation_id` is a chat's, created here when it does not exist yet. regenerate: no
    user message is saved; the reply answers the last one, whose earlier replies are superseded.
    Past `max_active_per_user` STREAMING replies of the user (0: no limit) nothing is written.
    owner_addr: where the owner serves the reply's live text (WatchReply), kept with the lease.

    Inside the transaction the statements are pipelined: each is sent without waiting for the one before,
    and the start waits only where it needs an answer to go on (a start in a conversation: its lock, key
    and busy check), then for every other answer at the pipeline's end, checked before the COMMIT. A check
    that refuses after later statements ran rolls them back with the transaction.
    """
    async with pool.connection() as conn, conn.transaction():
        async with conn.pipeline():
            if conversation_id is None:
                if request_id is not None and (attached := await _attached(conn, user_id, request_id)) is not None:
                    return attached
                conversation_id = str(uuid.uuid4())
                await conn.execute(
                    "INSERT INTO conversations (id, user_id, title) VALUES (%s, %s, %s)",
                    (conversation_id, user_id, _title(content)),
                )
            else:
                if chat:
                    await conn.execute(
                        "INSERT INTO conversations (id, user_id, title) VALUES (%s, %s, %s)"
                        " ON CONFLICT (id) DO NOTHING",
                        (conversation_id, user_id, _title(content)),
                    )
                locked = await conn.execute(
                    "SELECT id FROM conversations WHERE id = %s AND user_id = %s FOR UPDATE", (conversation_id, user_id)
                )
                # after the lock: a retry that waited for its original's commit sees the key and attaches, never
                # finding the original's reply in the way
                keyed = None if request_id is None else await _find_key(conn, user_id, request_id)
                busy = await conn.execute(
                    "SELECT id FROM messages WHERE conversation_id = %s AND status = 'streaming'", (conversation_id,)
                )
                if await locked.fetchone() is None:
                    raise conversation_not_found(conversation_id)
                if keyed is not None and (attached := await _attached_by(conn, user_id, keyed)) is not None:
                    return attached
                _refuse_busy(conversation_id, await busy.fetchone())
                await conn.execute(
                    "UPDATE conversations SET updated_at = clock_timestamp() WHERE id = %s", (conversation_id,)
                )
            # the count is taken by a statement sent after the lock's, so it runs once the lock is held
            active = await _count_active(conn, user_id) if max_active_per_user else None
            if regenerate:
                await _supersede_last_replies(conn, conversation_id)
            else:
                await conn.execute(
                    "INSERT INTO messages (id, conversation_id, user_id, role, content, status, client_id)"
                    " VALUES (%s, %s, %s, 'user', %s, 'complete', %s)",
                    (str(uuid.uuid4()), conversation_id, user_id, content, client_message_id),
                )
            assistant_id = str(uuid.uuid4())
            inserted = await conn.execute(
                sql.SQL(
                    "INSERT INTO messages AS m"
                    " (id, conversation_id, user_id, role, status, model, lease_owner, owner_addr, lease_expires_at)"
                    " VALUES (%s, %s, %s, 'assistant', 'streaming', %s, %s, %s,"
                    " clock_timestamp() + make_interval(secs => %s)) RETURNING {}"
                ).format(MESSAGE_COLUMNS),
                (assistant_id, conversation_id, user_id, model, owner, owner_addr, lease_seconds),
            )
            key = None
            if request_id is not None:
                key = await conn.execute(
                    "INSERT INTO request_keys (user_id, request_id, message_id) VALUES (%s, %s, %s)"
                    " ON CONFLICT DO NOTHING RETURNING message_id",
                    (user_id, request_id, assistant_id),
                )
            earlier = await conn.execute(
                "SELECT role, content FROM messages WHERE conversation_id = %s AND id <> %s"
                " AND NOT superseded AND (role = 'user' OR content <> '') ORDER BY seq",
                (conversation_id, assistant_id),
            )
        # the pipeline ended by sending what was queued and taking every answer
        if active is not None:
            await _refuse_past_limit(active, max_active_per_user)
        row = await inserted.fetchone()
        assert row is not None
        assistant = MessageRecord.from_row(row)
        if key is not None and await key.fetchone() is None:
            # a concurrent retry committed the same key first: attach to its reply instead
            raise RequestRace()
        history = [(Role(r["role"]), r["content"]) for r in await earlier.fetchall()]
        return StartedReply(conversation_id, assistant, history, created=True, user_id=user_id)


def _refuse_busy(conversation_id: str, busy: DictRow | None) -> None:
    if busy is not None:
        raise ReplyInProgress(
            f"message {busy['id']} is still streaming in conversation {conversation_id}; "
            "wait for it, cancel it, or send with interrupt"
        )


async def _supersede_last_replies(conn: AsyncConnection[DictRow], conversation_id: str) -> None:
    """Regenerating: the replies to the conversation's last user message are no longer its answer."""
    cursor = await conn.execute(
        "SELECT seq FROM messages WHERE conversation_id = %s AND role = 'user' ORDER BY seq DESC LIMIT 1",
        (conversation_id,),
    )
    last_user = await cursor.fetchone()
    if last_user is None:
        raise FailedPrecondition(f"conversation {conversation_id} has no message to regenerate a reply to")
    await conn.execute(
        "UPDATE messages SET superseded = true WHERE conversation_id = %s AND role = 'assistant' AND seq > %s",
        (conversation_id, last_user["seq"]),
    )


async def _count_active(conn: AsyncConnection[DictRow], user_id: str) -> AsyncCursor[DictRow]:
    # one start of a user at a time counts, so two at once cannot both pass the limit
    await conn.execute("SELECT pg_advisory_xact_lock(%s::int, hashtext(%s))", (USER_LOCK_SPACE, user_id))
    return await conn.execute(
        "SELECT count(*) AS active FROM messages WHERE user_id = %s AND status = 'streaming'", (user_id,)
    )


async def _refuse_past_limit(active: AsyncCursor[DictRow], limit: int) -> None:
    row = await active.fetchone()
    if row is not None and row["active"] >= limit:
        raise ResourceExhausted(
            f"you have {limit} replies streaming, the limit; wait for one to end or stop one",
            retry_after=USER_RETRY_SECONDS,
        )


async def attach_to_request(pool: Pool, user_id: str, request_id: str) -> StartedReply:
    async with pool.connection() as conn:
        attached = await _attached(conn, user_id, request_id)
    assert attached is not None, "the key was committed by the transaction that won the race"
    return attached


async def _attached(conn: AsyncConnection[DictRow], user_id: str, request_id: str) -> StartedReply | None:
    """The reply already made for this request key, if any."""
    return await _attached_by(conn, user_id, await _find_key(conn, user_id, request_id))


async def _find_key(conn: AsyncConnection[DictRow], user_id: str, request_id: str) -> AsyncCursor[DictRow]:
    return await conn.execute(
        "SELECT message_id FROM request_keys WHERE user_id = %s AND request_id = %s", (user_id, request_id)
    )


async def _attached_by(
    conn: AsyncConnection[DictRow], user_id: str, keyed: AsyncCursor[DictRow]
) -> StartedReply | None:
    row = await keyed.fetchone()
    if row is None:
        return None
    existing = await message_of_user(conn, user_id, str(row["message_id"]))
    return StartedReply(existing.conversation_id, existing, [], created=False, user_id=user_id)


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
            " FROM unnest(%b::uuid[], %b::int[]) AS v(id, saved_end)"
            " WHERE m.id = v.id AND m.lease_owner = %s AND m.status = 'streaming' RETURNING m.id",
            (lease_seconds, list(ends), list(ends.values()), owner),
        )
        held = {str(row["id"]) for row in await cursor.fetchall()}
        kept = [piece for piece in pieces if piece.message_id in held]
        if kept:
            await conn.execute(
                "INSERT INTO message_saves (message_id, start_offset, text)"
                " SELECT * FROM unnest(%b::uuid[], %b::int[], %b::text[]) ON CONFLICT DO NOTHING",
                ([p.message_id for p in kept], [p.start for p in kept], [p.text for p in kept]),
            )
        await notify(conn, [Notice(p.message_id, Status.STREAMING, p.end) for p in kept])
    return held


async def finish_reply(pool: Pool, message_id: str, owner: str, text: str, ending: Ending) -> MessageRecord | None:
    """One transaction: the whole text and the terminal status commit together, fenced on the lease.

    A stop requested before this commits wins over a completion. None: the lease was gone.
    """
    usage = ending.usage
    async with pool.connection() as conn, conn.transaction():
        cursor = await conn.execute(
            sql.SQL(
                "UPDATE messages AS m"
                " SET status = CASE WHEN cancel_requested AND %(status)s = 'complete' THEN 'cancelled'"
                " ELSE %(status)s END,"
                " content = %(text)s, saved_length = %(length)s, error = %(error)s, finish_reason = %(finish)s,"
                " prompt_tokens = %(prompt)s, completion_tokens = %(completion)s, total_tokens = %(total)s,"
                " lease_owner = NULL, owner_addr = NULL, lease_expires_at = NULL, updated_at = clock_timestamp()"
                " WHERE id = %(id)s AND lease_owner = %(owner)s AND status = 'streaming' RETURNING {}"
            ).format(MESSAGE_COLUMNS),
            {
                "status": ending.status.value,
                "text": text,
                "length": len(text),
                "error": ending.error,
                "finish": ending.finish_reason,
                "prompt": usage.prompt_tokens if usage else None,
                "completion": usage.completion_tokens if usage else None,
                "total": usage.total_tokens if usage else None,
                "id": message_id,
                "owner": owner,
            },
        )
        row = await cursor.fetchone()
        if row is None:
            return None
        record = MessageRecord.from_row(row)
        await _after_end(conn, [record])
    return record


async def end_with_saved_text(pool: Pool, message_id: str, status: Status, error: str) -> MessageRecord | None:
    """End one streaming message whose owner did not answer a stop, with its saved text. None: already ended."""
    records = await _end_from_saves(pool, status, error, sql.SQL("m.id = %s"), [message_id])
    return records[0] if records else None


async def end_expired(pool: Pool, sweeper: str, running: Sequence[str], error: str) -> list[MessageRecord]:
    """End as ERROR, with their saved text, the streaming messages whose lease expired, but those the sweeper runs.

    The sweeper's own message whose lease expired while it runs it is left alone: its owner is cut off
    from the database and renews the lease once it is back, or its end is written then.
    """
    condition = sql.SQL(
        "m.lease_expires_at < clock_timestamp() AND (m.lease_owner IS DISTINCT FROM %s OR m.id <> ALL(%s::uuid[]))"
    )
    return await _end_from_saves(pool, Status.ERROR, error, condition, [sweeper, list(running)])


async def _end_from_saves(
    pool: Pool, status: Status, error: str, condition: sql.Composable, params: list[object]
) -> list[MessageRecord]:
    """End the streaming messages that meet `condition` with their saved text, every committed save of it.

    The rows are locked first: a save holds its message's row until it commits (save_pieces updates the
    row before it inserts), so once the locks are held no save is in flight, and the next statement's
    snapshot holds every save that committed; a later one finds the message ended and writes nothing.
    Only then are the saves copied into the message and deleted, in this one transaction.
    """
    async with pool.connection() as conn, conn.transaction():
        cursor = await conn.execute(
            sql.SQL("SELECT m.id FROM messages m WHERE {condition} AND m.status = 'streaming' FOR UPDATE").format(
                condition=condition
            ),
            params,
        )
        ids = [row["id"] for row in await cursor.fetchall()]
        if not ids:
            return []
        cursor = await conn.execute(
            sql.SQL(
                "UPDATE messages AS m SET status = %s, error = %s, content = {saved},"
                " lease_owner = NULL, owner_addr = NULL, lease_expires_at = NULL, updated_at = clock_timestamp()"
                " WHERE m.id = ANY(%s) AND m.status = 'streaming' RETURNING {columns}"
            ).format(saved=SAVED_TEXT, columns=MESSAGE_COLUMNS),
            [status.value, error, ids],
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
        record = await message_of_user(conn, user_id, message_id)
        if record.terminal or record.role is not Role.ASSISTANT:
            return record
        await conn.execute("UPDATE messages SET cancel_requested = true WHERE id = %s", (message_id,))
        await notify(conn, [Notice(message_id, Status.STREAMING, len(record.content), cancel_requested=True)])
    return record
