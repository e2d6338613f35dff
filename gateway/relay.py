"""Relaying reply events to a browser as an SSE body: pings while idle, a clean end on shutdown.

The body pulls one event at a time, only when the server asks for the next chunk, so a client
that stops reading holds at most one event here, never a growing queue. A failure after the
stream has begun ends it cleanly: the client resumes from its last id.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from gateway import sse, views
from gateway.errors import ApiError, from_exception
from gateway.metrics import GatewayMetrics
from genservice.v1 import genservice_pb2 as pb

log = logging.getLogger(__name__)


async def _next(events: AsyncIterator[pb.ReplyEvent]) -> pb.ReplyEvent:
    return await anext(events)


def _discard(task: asyncio.Task[pb.ReplyEvent]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("a cancelled read ended with %r", task.exception())


async def close_events(events: AsyncIterator[pb.ReplyEvent]) -> None:
    if isinstance(events, AsyncGenerator):
        await events.aclose()


async def first_event(events: AsyncIterator[pb.ReplyEvent], timeout: float) -> pb.ReplyEvent:
    """The stream's first event, before any response starts, so a failure becomes a JSON error instead."""
    try:
        async with asyncio.timeout(timeout):
            return await anext(events)
    except StopAsyncIteration:
        await close_events(events)
        log.warning("an event stream ended before its first event")
        raise ApiError(503, "unavailable", "the reply stream ended before it began; try again") from None
    except Exception as exc:
        await close_events(events)
        raise from_exception(exc) from None


class EventStreamResponse(StreamingResponse):
    """An SSE response whose body is closed when the response ends, however it ends (a client gone, too)."""

    media_type = sse.MEDIA_TYPE

    def __init__(self, body: AsyncIterator[bytes], headers: Mapping[str, str] = sse.HEADERS) -> None:
        super().__init__(body, headers=headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if isinstance(self.body_iterator, AsyncGenerator):
                await self.body_iterator.aclose()


class Relay:
    def __init__(self, ping_seconds: float, metrics: GatewayMetrics) -> None:
        self._ping_seconds = ping_seconds
        self._metrics = metrics
        self._draining = False
        self._closing = False
        self._closed: asyncio.Future[None] | None = None

    @property
    def draining(self) -> bool:
        """The process is shutting down: health says so, so that new clients go elsewhere."""
        return self._draining

    def begin_drain(self) -> None:
        self._draining = True

    def close_all(self) -> None:
        """End every open stream cleanly after the event it is sending, and every later one at once."""
        self._draining = self._closing = True
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)

    def _closed_future(self) -> asyncio.Future[None]:
        if self._closed is None:
            self._closed = asyncio.get_running_loop().create_future()
            if self._closing:
                self._closed.set_result(None)
        return self._closed

    async def body(
        self,
        first: pb.ReplyEvent,
        events: AsyncIterator[pb.ReplyEvent],
        route: str,
        frames: Callable[[pb.ReplyEvent], bytes | None] = views.event_frame,
    ) -> AsyncIterator[bytes]:
        """`first` (already pulled, a `started`), then the rest of `events` up to `finished`, as `frames` encodes them.

        An event that `frames` gives None for is skipped.
        """
        message_id = first.started.message_id
        gauge = self._metrics.open_streams.labels(route=route)
        gauge.inc()
        pending: asyncio.Task[pb.ReplyEvent] | None = None
        # what ended the stream; a body closed from outside (the client went away) keeps the first value
        ending, failure = "client_gone", None
        try:
            yield frames(first) or b""
            if views.is_finished(first):
                ending = "finished"
                return
            closed = self._closed_future()
            while True:
                if pending is None:
                    pending = asyncio.create_task(_next(events))
                waiters: set[asyncio.Future[Any]] = {pending, closed}
                done, _ = await asyncio.wait(waiters, timeout=self._ping_seconds, return_when="FIRST_COMPLETED")
                if pending in done:
                    task, pending = pending, None
                    try:
                        event = task.result()
                    except StopAsyncIteration:
                        ending = "upstream_ended"
                        return
                    except Exception as exc:
                        ending, failure = "upstream_failed", exc
                        return
                    frame = frames(event)
                    if frame is not None:
                        yield frame
                    if views.is_finished(event):
                        ending = "finished"
                        return
                elif closed in done:
                    ending = "shutdown"
                    return
                else:
                    yield sse.PING
        finally:
            gauge.dec()
            self._record_end(route, message_id, ending, failure)
            if pending is not None and not pending.done():
                # the source ends itself when its pending read is cancelled; nothing here awaits it, since
                # this may run inside a cancelled scope
                pending.cancel()
                pending.add_done_callback(_discard)
            else:
                await close_events(events)

    def _record_end(self, route: str, message_id: str, ending: str, failure: Exception | None) -> None:
        if ending == "finished":
            log.debug("message %s: %s stream finished", message_id, route)
            return
        self._metrics.streams_ended_early.labels(reason=ending).inc()
        if failure is not None:
            error = from_exception(failure)
            log.warning("message %s: %s stream ended early: %s (%s)", message_id, route, error.code, error.message)
        else:
            log.info("message %s: %s stream ended early: %s", message_id, route, ending)
