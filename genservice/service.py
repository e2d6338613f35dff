"""The gRPC servicer: validates what callers send and relays generations to them; errors map in `rpc`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from genservice import writes
from genservice.config import GenServiceConfig
from genservice.generation import Abandoned, Generation
from genservice.generations import Generations
from genservice.replies import convert, paging, queries
from genservice.replies.chats import chat_conversation_id
from genservice.replies.errors import InvalidArgument
from genservice.replies.follow import follow_message
from genservice.replies.listener import ListenerHub
from genservice.replies.records import MessageRecord, Status
from genservice.replies.shared_reads import SharedReads
from genservice.replies.validation import bounded_text, parse_id, parse_offset, require_content, require_user
from genservice.reply_watches import ReplyWatches
from genservice.rpc_errors import Context, rpc, service_error
from genservice.v1 import genservice_pb2 as pb
from genservice.v1 import genservice_pb2_grpc as pb_grpc
from genservice.writes import StartedReply

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplyStart:
    """A StreamReplyRequest, checked."""

    user_id: str
    # None: a new conversation
    conversation_id: str | None
    content: str
    model: str
    request_id: str | None
    chat: bool
    client_message_id: str | None
    regenerate: bool


# how long a stop waits for the generation's owner before ending the message itself
CANCEL_WAIT_SECONDS = 3.0


def _report_unheard_failure(starting: asyncio.Future[StartedReply]) -> None:
    """A start whose caller left: its failure has no one to go to but the log."""
    if starting.cancelled() or not isinstance(failure := starting.exception(), Exception):
        return
    # an unexpected failure is logged with its traceback by service_error
    log.info("a start whose caller had left ended: %s", service_error(failure))


class GenerationService(pb_grpc.GenerationServiceServicer):
    def __init__(
        self, config: GenServiceConfig, reads: SharedReads, hub: ListenerHub, generations: Generations
    ) -> None:
        self._config = config
        self._reads = reads
        self._pool = reads.pool
        self._hub = hub
        self._generations = generations
        # starts whose callers may have left; each one writes and launches its reply all the same
        self._starting: set[asyncio.Future[StartedReply]] = set()

    @rpc
    async def StreamReply(  # noqa: N802 (the generated base's name)
        self, request: pb.StreamReplyRequest, context: Context
    ) -> AsyncIterator[pb.ReplyEvent]:
        start = self._checked_start(request)
        if not self._config.allows(start.model):
            raise InvalidArgument(f"model {start.model!r} is not allowed here")
        user_id = start.user_id
        # the start is the service's, not the caller's: a caller that leaves while it is written only stops
        # listening, and the reply is written and generated as if it had stayed, never left half-started
        starting = asyncio.ensure_future(self._start_and_launch(start, request.interrupt))
        self._starting.add(starting)
        starting.add_done_callback(self._starting.discard)
        try:
            reply = await asyncio.shield(starting)
        except asyncio.CancelledError:
            starting.add_done_callback(_report_unheard_failure)
            raise
        message_id = reply.assistant.id
        generation = self._generations.get(message_id)
        # a caller that can reach this process may follow the reply on its one WatchReplies stream instead
        owner_addr = self._generations.owner_addr if generation is not None else ""
        yield pb.ReplyEvent(
            started=pb.ReplyStarted(message_id=message_id, conversation_id=reply.conversation_id, owner_addr=owner_addr)
        )
        async for event in self._relay(user_id, message_id, generation, 0):
            yield event

    @rpc
    async def WatchReply(  # noqa: N802
        self, request: pb.WatchReplyRequest, context: Context
    ) -> AsyncIterator[pb.ReplyEvent]:
        """From the generation in memory when it runs here (and is this user's), else from Postgres."""
        user_id = require_user(request.user_id)
        message_id = parse_id(request.message_id, "message_id")
        offset = parse_offset(request.offset)
        generation = self._generations.get(message_id)
        if generation is None or generation.user_id != user_id or generation.final is not None:
            async for event in follow_message(self._reads, self._hub, user_id, message_id, offset):
                yield event
            return
        yield pb.ReplyEvent(started=pb.ReplyStarted(message_id=message_id, conversation_id=generation.conversation_id))
        async for event in self._relay(user_id, message_id, generation, offset):
            yield event

    @rpc
    async def WatchReplies(  # noqa: N802
        self, requests: AsyncIterator[pb.WatchRepliesRequest], context: Context
    ) -> AsyncIterator[pb.WatchRepliesResponse]:
        """Every reply the caller watches here, from memory; it follows the others from Postgres itself."""
        watches = ReplyWatches(self._generations.get)
        reading = asyncio.create_task(watches.read(requests), name="watch-replies-requests")
        try:
            async for batch in watches.batches():
                yield batch
        finally:
            reading.cancel()
            watches.close()

    @rpc
    async def GetMessage(self, request: pb.GetMessageRequest, context: Context) -> pb.Message:  # noqa: N802
        user_id = require_user(request.user_id)
        record = await queries.get_message(self._pool, user_id, parse_id(request.message_id, "message_id"))
        return convert.message_to_pb(record)

    @rpc
    async def ListMessages(  # noqa: N802
        self, request: pb.ListMessagesRequest, context: Context
    ) -> pb.ListMessagesResponse:
        user_id = require_user(request.user_id)
        conversation_id = parse_id(request.conversation_id, "conversation_id")
        size = paging.page_size(request.page_size, paging.DEFAULT_MESSAGE_PAGE_SIZE, paging.MAX_MESSAGE_PAGE_SIZE)
        after = paging.decode_seq_token(request.page_token)
        page = await queries.list_messages(self._pool, user_id, conversation_id, size, after, paging.MESSAGE_PAGE_BYTES)
        response = pb.ListMessagesResponse(messages=[convert.message_to_pb(r) for r in page.messages])
        if page.last_seq is not None:
            response.next_page_token = paging.encode_seq_token(page.last_seq)
        return response

    @rpc
    async def ListConversations(  # noqa: N802
        self, request: pb.ListConversationsRequest, context: Context
    ) -> pb.ListConversationsResponse:
        user_id = require_user(request.user_id)
        size = paging.page_size(request.page_size)
        after = paging.decode_token(request.page_token)
        records = await queries.list_conversations(self._pool, user_id, size + 1, after)
        response = pb.ListConversationsResponse(conversations=[convert.conversation_to_pb(r) for r in records[:size]])
        if len(records) > size:
            last = records[size - 1]
            response.next_page_token = paging.encode_token(last.updated_at, last.id)
        return response

    @rpc
    async def CancelReply(self, request: pb.CancelReplyRequest, context: Context) -> pb.Message:  # noqa: N802
        user_id = require_user(request.user_id)
        record = await self._cancel(user_id, parse_id(request.message_id, "message_id"))
        return convert.message_to_pb(record)

    def _checked_start(self, request: pb.StreamReplyRequest) -> ReplyStart:
        user_id = require_user(request.user_id)
        content = request.content
        if not request.regenerate:
            content = require_content(content, self._config.max_content_chars)
        chat_id = bounded_text(request.chat_id, "chat_id")
        if chat_id and request.conversation_id:
            raise InvalidArgument("give conversation_id or chat_id, not both")
        if chat_id:
            conversation_id: str | None = chat_conversation_id(user_id, chat_id)
        else:
            conversation_id = parse_id(request.conversation_id, "conversation_id") if request.conversation_id else None
        if request.regenerate and conversation_id is None:
            raise InvalidArgument("regenerate needs the conversation_id or chat_id of the reply to regenerate")
        return ReplyStart(
            user_id=user_id,
            conversation_id=conversation_id,
            content=content,
            model=bounded_text(request.model, "model") or self._config.openai_model,
            request_id=bounded_text(request.request_id, "request_id") or None,
            chat=bool(chat_id),
            client_message_id=bounded_text(request.client_message_id, "client_message_id") or None,
            regenerate=request.regenerate,
        )

    async def _start_and_launch(self, start: ReplyStart, interrupt: bool) -> StartedReply:
        with self._generations.admission():
            reply = await self._start(start, interrupt)
            if reply.created:
                self._generations.launch(reply)
        return reply

    async def _start(self, start: ReplyStart, interrupt: bool) -> StartedReply:
        async def attempt() -> StartedReply:
            try:
                return await writes.start_reply(
                    self._pool,
                    user_id=start.user_id,
                    conversation_id=start.conversation_id,
                    content=start.content,
                    model=start.model,
                    request_id=start.request_id,
                    owner=self._generations.owner,
                    owner_addr=self._generations.owner_addr,
                    lease_seconds=self._config.lease_seconds,
                    chat=start.chat,
                    client_message_id=start.client_message_id,
                    regenerate=start.regenerate,
                    max_active_per_user=self._config.max_active_replies_per_user,
                )
            except writes.RequestRace:
                assert start.request_id is not None
                return await writes.attach_to_request(self._pool, start.user_id, start.request_id)

        try:
            return await attempt()
        except writes.ReplyInProgress:
            if not interrupt or start.conversation_id is None:
                raise
        streaming = await queries.streaming_reply_in(self._pool, start.conversation_id)
        if streaming is not None:
            await self._cancel(start.user_id, streaming)
        return await attempt()

    async def _relay(
        self, user_id: str, message_id: str, generation: Generation | None, offset: int
    ) -> AsyncIterator[pb.ReplyEvent]:
        """Deltas after `offset`, then `finished`: from `generation` in memory, else (or once it ended
        elsewhere) from Postgres.

        While this caller's stream is slow to take an event, the generation's text piles up and goes
        as one delta: a backlog never becomes a queue of small messages.
        """
        sent = offset
        if generation is not None:
            try:
                async for item in generation.follow(offset):
                    if isinstance(item, MessageRecord):
                        yield pb.ReplyEvent(finished=pb.ReplyFinished(message=convert.message_to_pb(item)))
                        return
                    start, text = item
                    yield convert.delta_event(start, text)
                    sent = start + len(text)
            except Abandoned:
                log.info("message %s: ended elsewhere; its caller reads from Postgres at %d", message_id, sent)
        async for event in follow_message(self._reads, self._hub, user_id, message_id, sent, seen_unsaved=True):
            if not event.HasField("started"):
                yield event

    async def _cancel(self, user_id: str, message_id: str) -> MessageRecord:
        """Ask the owner, wherever it runs, to stop; end the message here if it does not answer."""
        async with self._hub.subscribe(message_id) as subscription:
            record = await writes.request_cancel(self._pool, user_id, message_id)
            try:
                async with asyncio.timeout(CANCEL_WAIT_SECONDS):
                    while not record.terminal:
                        await subscription.wait()
                        record = await queries.get_message(self._pool, user_id, message_id)
            except TimeoutError:
                log.warning("message %s: its owner did not stop in time; ending it here", message_id)
                await writes.end_with_saved_text(self._pool, message_id, Status.CANCELLED, "")
                record = await queries.get_message(self._pool, user_id, message_id)
        return record
