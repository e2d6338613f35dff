"""The gRPC servicer: validates, maps errors at the boundary, and relays generations to callers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import grpc
import psycopg

from genservice import convert, paging, store
from genservice.batcher import DATABASE_ERRORS
from genservice.config import GenServiceConfig
from genservice.database import Pool
from genservice.errors import FailedPrecondition, ServiceError, Unavailable
from genservice.follow import follow_message
from genservice.generation import FellBehind, Generations
from genservice.hub import ListenerHub
from genservice.ids import bounded_text, parse_id, require_content, require_user
from genservice.store import MessageRecord, StartedReply
from genservice.v1 import genservice_pb2 as pb
from genservice.v1 import genservice_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

T = TypeVar("T")
# how long a stop waits for the generation's owner before ending the message itself
CANCEL_WAIT_SECONDS = 3.0


def _service_error(exc: Exception) -> ServiceError:
    """Any failure as the canonical code and message a caller sees; no traceback ever reaches one."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, psycopg.errors.UniqueViolation):
        return FailedPrecondition("a reply is already streaming in this conversation")
    if isinstance(exc, DATABASE_ERRORS):
        return Unavailable("the database is unavailable; try again shortly")
    log.error("unexpected error in an RPC", exc_info=exc)
    return ServiceError("internal error")


async def _unary(context: grpc.aio.ServicerContext[Any, Any], work: Awaitable[T]) -> T:
    try:
        return await work
    except Exception as exc:
        error = _service_error(exc)
        await context.abort(error.code, str(error))
        raise AssertionError("abort raises") from None


async def _streaming(
    context: grpc.aio.ServicerContext[Any, Any], events: AsyncIterator[pb.ReplyEvent]
) -> AsyncIterator[pb.ReplyEvent]:
    try:
        async for event in events:
            yield event
    except Exception as exc:
        error = _service_error(exc)
        await context.abort(error.code, str(error))


class GenerationService(pb_grpc.GenerationServiceServicer):
    def __init__(self, config: GenServiceConfig, pool: Pool, hub: ListenerHub, generations: Generations) -> None:
        self._config = config
        self._pool = pool
        self._hub = hub
        self._generations = generations

    async def StreamReply(  # noqa: N802 (the generated base's name)
        self, request: pb.StreamReplyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.ReplyEvent]:
        async for event in _streaming(context, self._stream_reply(request)):
            yield event

    async def WatchReply(  # noqa: N802
        self, request: pb.WatchReplyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.ReplyEvent]:
        async for event in _streaming(context, self._watch(request.user_id, request.message_id, request.offset)):
            yield event

    async def GetMessage(  # noqa: N802
        self, request: pb.GetMessageRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Message:
        return await _unary(context, self._get_message(request.user_id, request.message_id))

    async def ListMessages(  # noqa: N802
        self, request: pb.ListMessagesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListMessagesResponse:
        return await _unary(context, self._list_messages(request))

    async def ListConversations(  # noqa: N802
        self, request: pb.ListConversationsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListConversationsResponse:
        return await _unary(context, self._list_conversations(request))

    async def CancelReply(  # noqa: N802
        self, request: pb.CancelReplyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Message:
        return await _unary(context, self._cancel_pb(request.user_id, request.message_id))

    async def _stream_reply(self, request: pb.StreamReplyRequest) -> AsyncIterator[pb.ReplyEvent]:
        user_id = require_user(request.user_id)
        content = require_content(request.content, self._config.max_content_chars)
        conversation_id = parse_id(request.conversation_id, "conversation_id") if request.conversation_id else None
        request_id = bounded_text(request.request_id, "request_id") or None
        model = bounded_text(request.model, "model") or self._config.openai_model
        if not self._generations.accepting:
            raise Unavailable("the service is shutting down; retry on another replica")
        reply = await self._start(user_id, conversation_id, content, model, request_id, request.interrupt)
        if reply.created:
            self._generations.launch(reply)
        yield pb.ReplyEvent(
            started=pb.ReplyStarted(message_id=reply.assistant.id, conversation_id=reply.conversation_id)
        )
        async for event in self._relay(user_id, reply.assistant):
            yield event

    async def _start(
        self,
        user_id: str,
        conversation_id: str | None,
        content: str,
        model: str,
        request_id: str | None,
        interrupt: bool,
    ) -> StartedReply:
        async def attempt() -> StartedReply:
            try:
                return await store.start_reply(
                    self._pool,
                    user_id=user_id,
                    conversation_id=conversation_id,
                    content=content,
                    model=model,
                    request_id=request_id,
                    owner=self._generations.owner,
                    lease_seconds=self._config.lease_seconds,
                )
            except store.RequestRace:
                assert request_id is not None
                return await store.attach_to_request(self._pool, user_id, request_id)

        try:
            return await attempt()
        except FailedPrecondition:
            if not interrupt or conversation_id is None:
                raise
        streaming = await store.streaming_reply_in(self._pool, conversation_id)
        if streaming is not None:
            await self._cancel(user_id, streaming)
        return await attempt()

    async def _relay(self, user_id: str, message: MessageRecord) -> AsyncIterator[pb.ReplyEvent]:
        """From the generation in memory when it runs here, else (or once too slow) from Postgres."""
        sent = 0
        generation = self._generations.get(message.id)
        if generation is not None:
            try:
                async for item in generation.follow(0):
                    if isinstance(item, MessageRecord):
                        yield pb.ReplyEvent(finished=pb.ReplyFinished(message=convert.message_to_pb(item)))
                        return
                    offset, text = item
                    yield pb.ReplyEvent(delta=pb.ReplyDelta(text=text, offset=offset))
                    sent = offset + len(text)
            except FellBehind:
                log.info("message %s: a caller fell behind at %d; it reads from Postgres now", message.id, sent)
        async for event in follow_message(self._pool, self._hub, user_id, message.id, sent, seen_unsaved=True):
            if not event.HasField("started"):
                yield event

    async def _watch(self, user_id: str, message_id: str, offset: int) -> AsyncIterator[pb.ReplyEvent]:
        async for event in follow_message(self._pool, self._hub, require_user(user_id), message_id, offset):
            yield event

    async def _get_message(self, user_id: str, message_id: str) -> pb.Message:
        record = await store.get_message(self._pool, require_user(user_id), parse_id(message_id, "message_id"))
        return convert.message_to_pb(record)

    async def _list_messages(self, request: pb.ListMessagesRequest) -> pb.ListMessagesResponse:
        records = await store.list_messages(
            self._pool, require_user(request.user_id), parse_id(request.conversation_id, "conversation_id")
        )
        return pb.ListMessagesResponse(messages=[convert.message_to_pb(r) for r in records])

    async def _list_conversations(self, request: pb.ListConversationsRequest) -> pb.ListConversationsResponse:
        size = paging.page_size(request.page_size)
        after = paging.decode_token(request.page_token)
        records = await store.list_conversations(self._pool, require_user(request.user_id), size + 1, after)
        response = pb.ListConversationsResponse(conversations=[convert.conversation_to_pb(r) for r in records[:size]])
        if len(records) > size:
            last = records[size - 1]
            response.next_page_token = paging.encode_token(last.updated_at, last.id)
        return response

    async def _cancel_pb(self, user_id: str, message_id: str) -> pb.Message:
        record = await self._cancel(require_user(user_id), parse_id(message_id, "message_id"))
        return convert.message_to_pb(record)

    async def _cancel(self, user_id: str, message_id: str) -> MessageRecord:
        """Ask the owner, wherever it runs, to stop; end the message here if it does not answer."""
        async with self._hub.subscribe(message_id) as subscription:
            record = await store.request_cancel(self._pool, user_id, message_id)
            try:
                async with asyncio.timeout(CANCEL_WAIT_SECONDS):
                    while not record.terminal:
                        await subscription.wait()
                        record = await store.get_message(self._pool, user_id, message_id)
            except TimeoutError:
                log.warning("message %s: its owner did not stop in time; ending it here", message_id)
                await store.end_from_saves(self._pool, "cancelled", "", message_id=message_id)
                record = await store.get_message(self._pool, user_id, message_id)
        return record
