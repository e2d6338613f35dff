"""Following a message for a browser: from the owner's live stream where it can, else through Postgres LISTEN.

A streaming message names the genservice that runs it. When that address is one of the configured
genservices, its WatchReply gives the text as the model writes it, ahead of the saves: one stream per
reply per gateway process, shared by all its followers here (live_replies). If the owner
cannot be reached (gone, restarting) or is slow to start the stream (a busy process accepts new
calls one at a time on its event loop), the follow goes through Postgres from the start; if it fails
midway, Postgres continues from the last character sent. Offsets join the two with no gap and no
repeat, and Postgres has the last word: the `finished` it gives is the truth.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from gateway.errors import ApiError
from gateway.live_replies import LiveReplyLost
from gateway.relay import close_events
from gateway.resources import Resources
from genservice.replies import queries
from genservice.replies.follow import follow_message
from genservice.replies.validation import parse_id, parse_offset
from genservice.v1 import genservice_pb2 as pb

log = logging.getLogger(__name__)


async def follow_reply(res: Resources, user_id: str, message_id: str, offset: int) -> AsyncIterator[pb.ReplyEvent]:
    """`started`, deltas after `offset`, `finished`, as follow_message gives them. Bad input raises before `started`."""
    message_id = parse_id(message_id, "message_id")
    offset = parse_offset(offset)
    sent, started = offset, False
    owner = await queries.live_owner(res.pool, user_id, message_id)
    if owner is not None and res.upstream.dials(owner):
        events = res.live.follow(owner, user_id, message_id, offset)
        # None: the owner's stream ended without `finished`
        failure: Exception | None = None
        try:
            async with asyncio.timeout(res.config.owner_start_seconds):
                first = await anext(events)
            started = True
            yield first
            async for event in events:
                if event.HasField("finished"):
                    res.metrics.owner_follows.labels(outcome="finished").inc()
                    yield event
                    return
                yield event
                if event.HasField("delta"):
                    sent = event.delta.offset + len(event.delta.text)
        except (ApiError, LiveReplyLost, TimeoutError, StopAsyncIteration) as exc:
            failure = exc
        finally:
            await close_events(events)
        res.metrics.owner_follows.labels(outcome="failed_midway" if started else "not_started").inc()
        log.info("message %s: owner %s stopped (%r); following Postgres from %d", message_id, owner, failure, sent)
    async for event in follow_message(res.reads, res.hub, user_id, message_id, sent, seen_unsaved=started):
        if not (started and event.HasField("started")):
            yield event
