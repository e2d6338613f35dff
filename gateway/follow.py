"""Following a message for a browser: from the owner's live stream where it can, else through Postgres LISTEN.

A streaming message names the genservice that runs it. When that address is one of the configured
genservices, its WatchReply gives the text as the model writes it, ahead of the saves: one stream per
reply per gateway process, shared by all its followers here (live_replies). A busy owner can be slow
to start a stream (it accepts new calls one at a time on its event loop): past OWNER_START_SECONDS
the follow reads Postgres meanwhile and moves to the owner's stream once it answers. If the owner
cannot be reached, the follow stays on Postgres; if its stream fails midway, Postgres continues
from the last character sent. Offsets join the two with no gap and no repeat (nothing at or before
the last character sent is sent again), and Postgres has the last word: the `finished` it gives is
the truth.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from gateway.errors import ApiError
from gateway.live_replies import LiveReplyLost
from gateway.relay import close_events
from gateway.resources import Resources
from genservice.replies import convert
from genservice.replies.follow import follow_message
from genservice.replies.validation import parse_id, parse_offset
from genservice.v1 import genservice_pb2 as pb

log = logging.getLogger(__name__)

# how a shared owner stream can end without `finished`
OWNER_FAILURES = (ApiError, LiveReplyLost, StopAsyncIteration)


class _Sent:
    """What a follow has sent: whether `started`, and the offset after its last character."""

    def __init__(self, offset: int) -> None:
        self.started = False
        self.offset = offset
        self.finished = False

    def admit(self, event: pb.ReplyEvent) -> pb.ReplyEvent | None:
        """The event as it should go out after what was sent, or None when it says nothing new."""
        kind = event.WhichOneof("event")
        if kind == "started":
            if self.started:
                return None
            self.started = True
        elif kind == "delta":
            delta = event.delta
            end = delta.offset + len(delta.text)
            if end <= self.offset:
                return None
            if delta.offset < self.offset:
                unsent = delta.text[self.offset - delta.offset :]
                event = convert.delta_event(self.offset, unsent)
            self.offset = end
        elif kind == "finished":
            self.finished = True
        return event


async def follow_reply(res: Resources, user_id: str, message_id: str, offset: int) -> AsyncIterator[pb.ReplyEvent]:
    """`started`, deltas after `offset`, `finished`, as follow_message gives them. Bad input raises before `started`."""
    message_id = parse_id(message_id, "message_id")
    offset = parse_offset(offset)
    owner = res.live.owner_of(user_id, message_id) or await res.reads.live_owner(user_id, message_id)
    async for event in _follow(res, user_id, message_id, _Sent(offset), owner):
        yield event


async def rest_of_reply(
    res: Resources, user_id: str, started: pb.ReplyStarted, events: AsyncIterator[pb.ReplyEvent]
) -> AsyncIterator[pb.ReplyEvent]:
    """What follows StreamReply's `started`: the reply followed on this process's one stream to its owner
    when that owner can be watched (the call is closed, and the reply goes on), else the call's own events."""
    if not started.owner_addr or not res.upstream.dials(started.owner_addr):
        return events
    await close_events(events)
    sent = _Sent(0)
    sent.started = True
    return _follow(res, user_id, started.message_id, sent, started.owner_addr)


async def _follow(
    res: Resources, user_id: str, message_id: str, sent: _Sent, owner: str | None
) -> AsyncIterator[pb.ReplyEvent]:
    """The events after `sent`: the owner's live text where it can be watched, else (and after it fails) Postgres."""
    if owner is not None and res.upstream.dials(owner):
        offset = sent.offset
        live = res.live.follow(owner, user_id, message_id, offset)
        owner_started: asyncio.Future[pb.ReplyEvent] = asyncio.ensure_future(anext(live))
        answered = failed = False
        try:
            # not wait_for: on Python 3.11 it returns the result, and drops this task's cancellation, when both
            # come at once, and a cancelled relay would then follow the reply to its end
            await asyncio.wait((owner_started,), timeout=res.config.owner_start_seconds)
            if not owner_started.done():
                res.metrics.owner_follows.labels(outcome="slow_start").inc()
                async for event in _stored_until(res, user_id, message_id, sent, owner_started):
                    yield event
                if sent.finished:
                    return
            first = sent.admit(await owner_started)
            answered = True
            if first is not None:
                yield first
            async for event in live:
                admitted = sent.admit(event)
                if admitted is not None:
                    yield admitted
                if sent.finished:
                    return
        except (*OWNER_FAILURES, TimeoutError) as exc:
            failed = True
            log.info(
                "message %s: owner %s stopped (%r); following Postgres from %d", message_id, owner, exc, sent.offset
            )
        finally:
            # counted before any await: the relay closes this generator once it has `finished`
            if failed or sent.finished:
                outcome = "finished" if answered and not failed else "failed_midway" if answered else "not_started"
                res.metrics.owner_follows.labels(outcome=outcome).inc()
            if not owner_started.done():
                owner_started.cancel()
                # the generator cannot be closed while the task still runs it
                await asyncio.wait((owner_started,))
            await close_events(live)
    stored = follow_message(res.reads, res.hub, user_id, message_id, sent.offset, seen_unsaved=sent.started)
    async for event in stored:
        admitted = sent.admit(event)
        if admitted is not None:
            yield admitted


async def _stored_until(
    res: Resources, user_id: str, message_id: str, sent: _Sent, owner_started: asyncio.Future[pb.ReplyEvent]
) -> AsyncIterator[pb.ReplyEvent]:
    """Postgres's events for the follow, until it ends or the owner's stream starts (then the caller moves to it).

    An owner that fails to start leaves the follow on Postgres to the end.
    """
    stored = follow_message(res.reads, res.hub, user_id, message_id, sent.offset)
    following: asyncio.Future[pb.ReplyEvent] | None = None
    try:
        while not sent.finished:
            following = asyncio.ensure_future(anext(stored))
            owner_failed = owner_started.done() and owner_started.exception() is not None
            await asyncio.wait(
                (following,) if owner_failed else (following, owner_started), return_when=asyncio.FIRST_COMPLETED
            )
            if following.done():
                try:
                    event = following.result()
                except StopAsyncIteration:
                    return
                admitted = sent.admit(event)
                if admitted is not None:
                    yield admitted
            if owner_started.done() and owner_started.exception() is None:
                return
    finally:
        if following is not None and not following.done():
            following.cancel()
            # the generator cannot be closed while the task still runs it
            await asyncio.wait((following,))
        await close_events(stored)
