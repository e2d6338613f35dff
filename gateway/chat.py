"""The Vercel AI SDK chat transport: `POST /v1/chat` and its resume, stop and messages routes.

A chat id maps to one conversation per user (`genservice.replies.chats`). Starting a reply is a
write, so it goes through genservice; the reads (which reply a chat resumes or stops, the chat's
messages with the client's ids) are plain queries on the read side, as the SSE resume route's
are: one statement each, with no gRPC message limit on a long chat.

Chat ids arrive percent-encoded in the path, `/` as `%2F`. The server decodes the path before
routing, so `{chat_id:path}` takes everything up to the route's fixed last segment: a chat id
holding slashes, even one ending in `/stream`, comes out whole.
"""

from __future__ import annotations

import hashlib
import json
import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway import ui_stream, views
from gateway.errors import ApiError
from gateway.follow import follow_reply, rest_of_reply
from gateway.payloads import ChatRequest, chat_id_of, content_too_large, read_json
from gateway.relay import EventStreamResponse, first_event
from gateway.resources import Resources
from gateway.resources import request_resources as resources
from genservice.replies import queries
from genservice.replies.chats import chat_conversation_id
from genservice.replies.records import LatestReply, Status
from genservice.v1 import genservice_pb2 as pb

log = logging.getLogger(__name__)

# a reply that ended this recently is still replayed to a resume: the page that loaded its
# messages a moment before the end gets the whole text instead of keeping a partial one
RECENT_SECONDS = 5.0


def request_id(chat: ChatRequest, replaced_id: str) -> str:
    """The idempotency key of a POST: a retry of it has the same; another message or regenerate has another."""
    parts = [chat.chat_id, chat.trigger, chat.message_id]
    if chat.regenerate:
        parts.append(replaced_id)
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


async def _latest_reply(res: Resources, user_id: str, chat_id: str) -> LatestReply | None:
    return await queries.latest_reply(res.pool, user_id, chat_conversation_id(user_id, chat_id))


def _path_chat_id(request: Request) -> str:
    return chat_id_of(request.path_params["chat_id"], "the chat id in the path")


async def post_chat(request: Request) -> Response:
    res = resources(request)
    user_id = res.auth.user_id(request)
    try:
        body = await read_json(request, res.config.max_body_bytes)
    except ApiError as error:
        if error.status != 413:
            raise
        # the SDK posts the whole history, which grows with the chat; the server needs only the last message
        raise ApiError(413, error.code, f"{error.message}: send only the last message") from None
    chat = ChatRequest.from_json(body)
    if len(chat.text) > res.config.max_content_chars:
        raise content_too_large(len(chat.text), res.config.max_content_chars)
    replaced_id = chat.replaced_id
    if chat.regenerate and not replaced_id:
        # the SDK's regenerate() names no message: the reply it replaces is the chat's newest
        latest = await _latest_reply(res, user_id, chat.chat_id)
        replaced_id = latest.id if latest is not None else ""
    events = res.upstream.stream_reply(
        pb.StreamReplyRequest(
            user_id=user_id,
            chat_id=chat.chat_id,
            content="" if chat.regenerate else chat.text,
            request_id=request_id(chat, replaced_id),
            client_message_id="" if chat.regenerate else chat.message_id,
            regenerate=chat.regenerate,
            # a new message while a reply still runs (another tab, a reload without resume) stops that reply
            interrupt=True,
        )
    )
    first = await first_event(events, res.config.genservice_timeout_seconds)
    res.metrics.replies_started.inc()
    log.info("chat stream open for message %s", first.started.message_id)
    rest = await rest_of_reply(res, user_id, first.started, events)
    return EventStreamResponse(res.relay.body(first, rest, "chat", ui_stream.frames), ui_stream.HEADERS)


async def resume_chat(request: Request) -> Response:
    """The chat's running reply (or one that just ended), replayed from its first character, then live; else 204."""
    res = resources(request)
    user_id = res.auth.user_id(request)
    latest = await _latest_reply(res, user_id, _path_chat_id(request))
    if latest is None or (latest.status is not Status.STREAMING and latest.idle_seconds > RECENT_SECONDS):
        return Response(status_code=204)
    events = follow_reply(res, user_id, latest.id, 0)
    first = await first_event(events, res.config.genservice_timeout_seconds)
    res.metrics.resumes.labels(from_start="true").inc()
    log.info("chat resume stream open for message %s", latest.id)
    return EventStreamResponse(res.relay.body(first, events, "chat_resume", ui_stream.frames), ui_stream.HEADERS)


async def stop_chat(request: Request) -> Response:
    res = resources(request)
    user_id = res.auth.user_id(request)
    chat_id = _path_chat_id(request)
    latest = await _latest_reply(res, user_id, chat_id)
    if latest is None:
        raise ApiError(404, "not_found", f"chat {chat_id[:64]!r} not found")
    message = await res.upstream.cancel_reply(user_id, latest.id)
    return JSONResponse(views.message(message))


async def chat_messages(request: Request) -> Response:
    res = resources(request)
    user_id = res.auth.user_id(request)
    conversation_id = chat_conversation_id(user_id, _path_chat_id(request))
    messages = await queries.chat_messages(res.pool, user_id, conversation_id)
    return JSONResponse([views.ui_message(m) for m in messages])


def chat_routes() -> list[Route]:
    return [
        Route("/v1/chat", post_chat, methods=["POST"]),
        Route("/v1/chat/{chat_id:path}/stream", resume_chat, methods=["GET"]),
        Route("/v1/chat/{chat_id:path}/stop", stop_chat, methods=["POST"]),
        Route("/v1/chat/{chat_id:path}/messages", chat_messages, methods=["GET"]),
    ]
