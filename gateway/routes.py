"""The HTTP routes: each handler authenticates, checks its input, calls genservice or Postgres, answers.

Streams pull their first event before the response starts, so bad input and an unreachable
backend get a JSON error with the fitting status instead of an empty stream.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import psycopg
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from gateway import views
from gateway.chat import chat_routes
from gateway.follow import follow_reply, rest_of_reply
from gateway.payloads import ReplyRequest, content_too_large, parse_page_size, read_json, resume_offset
from gateway.relay import EventStreamResponse, first_event
from gateway.resources import Resources
from gateway.resources import request_resources as resources
from genservice.replies import queries
from genservice.v1 import genservice_pb2 as pb

log = logging.getLogger(__name__)


async def post_reply(request: Request) -> Response:
    res = resources(request)
    user_id = res.auth.user_id(request)
    reply = ReplyRequest.from_json(await read_json(request, res.config.max_body_bytes, res.config.body_timeout_seconds))
    if len(reply.content) > res.config.max_content_chars:
        raise content_too_large(len(reply.content), res.config.max_content_chars)
    events = res.upstream.stream_reply(
        pb.StreamReplyRequest(
            user_id=user_id,
            conversation_id=reply.conversation_id,
            content=reply.content,
            model=reply.model,
            request_id=reply.request_id,
            interrupt=reply.interrupt,
        )
    )
    first = await first_event(events, res.config.genservice_timeout_seconds)
    res.metrics.replies_started.inc()
    log.info("reply stream open for message %s", first.started.message_id)
    rest = await rest_of_reply(res, user_id, first.started, events)
    return EventStreamResponse(res.relay.body(first, rest, "reply"))


async def message_events(request: Request) -> Response:
    res = resources(request)
    user_id = res.auth.user_id(request)
    message_id = request.path_params["message_id"]
    offset = resume_offset(request.headers.get("last-event-id"), request.query_params.get("offset"))
    events = follow_reply(res, user_id, message_id, offset)
    first = await first_event(events, res.config.genservice_timeout_seconds)
    res.metrics.resumes.labels(from_start="true" if offset == 0 else "false").inc()
    log.info("follow stream open for message %s from offset %d", message_id, offset)
    return EventStreamResponse(res.relay.body(first, events, "follow"))


async def get_message(request: Request) -> Response:
    res = resources(request)
    user_id = res.auth.user_id(request)
    message = await res.upstream.get_message(user_id, request.path_params["message_id"])
    return JSONResponse(views.message(message))


async def cancel_message(request: Request) -> Response:
    res = resources(request)
    user_id = res.auth.user_id(request)
    message = await res.upstream.cancel_reply(user_id, request.path_params["message_id"])
    return JSONResponse(views.message(message))


async def list_conversations(request: Request) -> Response:
    res = resources(request)
    user_id = res.auth.user_id(request)
    page_size = parse_page_size(request.query_params.get("page_size"))
    page = await res.upstream.list_conversations(user_id, page_size, request.query_params.get("page_token", ""))
    return JSONResponse(
        {"conversations": [views.conversation(c) for c in page.conversations], "next_page_token": page.next_page_token}
    )


async def list_messages(request: Request) -> Response:
    res = resources(request)
    user_id = res.auth.user_id(request)
    page_size = parse_page_size(request.query_params.get("page_size"))
    listing = await res.upstream.list_messages(
        user_id, request.path_params["conversation_id"], page_size, request.query_params.get("page_token", "")
    )
    return JSONResponse(
        {"messages": [views.message(m) for m in listing.messages], "next_page_token": listing.next_page_token}
    )


async def healthz(request: Request) -> Response:
    res = resources(request)
    if res.relay.draining:
        return JSONResponse({"status": "draining"}, status_code=503)
    timeout = res.config.health_timeout_seconds
    postgres, genservice = await asyncio.gather(_postgres_answers(res, timeout), res.upstream.serving(timeout))
    # the LISTEN connection may be reconnecting (streams then re-read Postgres); unhealthy means it keeps failing
    listener = res.hub.healthy
    if postgres and genservice and listener:
        return JSONResponse({"status": "ok"})
    checks = {
        name: "ok" if up else "unavailable"
        for name, up in (("postgres", postgres), ("genservice", genservice), ("listener", listener))
    }
    return JSONResponse({"status": "unavailable", "checks": checks}, status_code=503)


async def _postgres_answers(res: Resources, timeout: float) -> bool:
    try:
        async with asyncio.timeout(timeout):
            await queries.ping(res.pool)
    except (TimeoutError, psycopg.Error) as exc:
        log.warning("Postgres health check failed: %s", type(exc).__name__)
        return False
    return True


async def metrics(request: Request) -> Response:
    return Response(generate_latest(resources(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)


# The page loads only its own files; should a model's text ever get past the page's sanitizer,
# inline scripts and event handlers still do not run.
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)


def routes(static_dir: Path) -> list[BaseRoute]:
    index = static_dir / "index.html"

    async def page(request: Request) -> Response:
        headers = {"Cache-Control": "no-cache", "Content-Security-Policy": PAGE_POLICY}
        return FileResponse(index, media_type="text/html", headers=headers)

    return [
        Route("/", page, methods=["GET", "HEAD"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/replies", post_reply, methods=["POST"]),
        Route("/v1/messages/{message_id}", get_message, methods=["GET"]),
        Route("/v1/messages/{message_id}/events", message_events, methods=["GET"]),
        Route("/v1/messages/{message_id}/cancel", cancel_message, methods=["POST"]),
        Route("/v1/conversations", list_conversations, methods=["GET"]),
        Route("/v1/conversations/{conversation_id}/messages", list_messages, methods=["GET"]),
        *chat_routes(),
        Mount("/static", StaticFiles(directory=static_dir), name="static"),
    ]
