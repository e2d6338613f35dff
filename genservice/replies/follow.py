"""Following a message from an offset: its saved text, then live text as notifications announce it.

One implementation for WatchReply and the gateway's resumed streams. It subscribes before it
reads, so nothing said between the read and the subscription is lost; offsets make a repeated
character impossible. Text and ends come only from Postgres: a notice only says when to read, and
without one a follower reads again after IDLE_SECONDS.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from genservice.replies import convert
from genservice.replies.errors import InvalidArgument
from genservice.replies.listener import ListenerHub
from genservice.replies.notices import says_more_than
from genservice.replies.shared_reads import SharedReads
from genservice.replies.validation import parse_id, parse_offset
from genservice.v1 import genservice_pb2 as pb

# a follower that heard nothing for this long reads Postgres anyway
IDLE_SECONDS = 2.0


async def follow_message(
    reads: SharedReads, hub: ListenerHub, user_id: str, message_id: str, offset: int, *, seen_unsaved: bool = False
) -> AsyncIterator[pb.ReplyEvent]:
    """`started`, then deltas after `offset`, then `finished`. Bad input raises before `started`.

    seen_unsaved: the caller got live text ahead of the saves, so an offset past the end of an ended
    message is no mistake (its owner lost the lease before saving it): it gets `finished`, the truth.
    """
    message_id = parse_id(message_id, "message_id")
    offset = parse_offset(offset)
    async with hub.subscribe(message_id) as subscription:
        read = await reads.read_after(user_id, message_id, offset)
        final = read.final
        if final is not None and offset > len(final.content) and not seen_unsaved:
            raise InvalidArgument(f"offset {offset} is past the end of message {message_id} ({len(final.content)})")
        yield pb.ReplyEvent(started=pb.ReplyStarted(message_id=read.message_id, conversation_id=read.conversation_id))
        sent, text = offset, read.text
        while True:
            if text:
                yield convert.delta_event(sent, text)
                sent += len(text)
            if final is not None:
                yield pb.ReplyEvent(finished=pb.ReplyFinished(message=convert.message_to_pb(final)))
                return
            notices = await subscription.wait(IDLE_SECONDS)
            text = ""
            if notices is None or says_more_than(notices, sent):
                read = await reads.read_after(user_id, message_id, sent)
                text, final = read.text, read.final
