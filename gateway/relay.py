"""Relaying reply events to a browser as an SSE body: merged under load, pings while idle, a clean end on shutdown.

One task per stream reads the upstream events into an outbox; the body takes everything waiting
there as one write, contiguous deltas merged into one. A client that reads slowly gets its backlog
as one larger delta, so its latency stays bounded instead of growing with a queue. The outbox holds
at most MAX_PENDING_CHARS: past that the reader stops reading, gRPC's flow control pushes back, and
genservice merges the text meanwhile. A failure after the stream has begun ends it cleanly: the
client resumes from its last id.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway import sse, views
from gateway.errors import ApiError, from_exception
from gateway.metrics import GatewayMetrics
from genservice.replies import convert
from genservice.v1 import genservice_pb2 as pb

log = logging.getLogger(__name__)


# text an outbox takes before its reader waits for the client
MAX_PENDING_CHARS = 16_384

Frames = Callable[[pb.ReplyEvent], bytes | None]


def _discard(task: asyncio.Task[None]) -> None:
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


class EventStreamResponse(Response):
    """An SSE response: the body written as it comes until it ends or the client goes away; closed either way.

    The body is written by a task of its own, so that each frame resumes a short stack rather than the
    whole middleware chain, while the request's task waits for the client to go away (uvicorn's `send`
    ignores a gone client instead of raising). Whichever ends first ends the other.
    """

    media_type = sse.MEDIA_TYPE

    def __init__(self, body: AsyncIterator[bytes], headers: Mapping[str, str] = sse.HEADERS) -> None:
        self.body_iterator = body
        self.status_code = 200
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        writing = asyncio.create_task(self._write(send))
        listening = asyncio.create_task(_until_disconnect(receive))
        try:
            await asyncio.wait((writing, listening), return_when=asyncio.FIRST_COMPLETED)
        finally:
            listening.cancel()
            if not writing.done():
                writing.cancel()
                # the body's end (its upstream closed) completes before the response does
                await asyncio.wait((writing,))
        if not writing.cancelled():
            writing.result()

    async def _write(self, send: Send) -> None:
        body = self.body_iterator
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for chunk in body:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            if isinstance(body, AsyncGenerator):
                await body.aclose()


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


@dataclass(slots=True)
class _Delta:
    offset: int
    pieces: list[str]


class Outbox:
    """What the upstream sent and the client has not been written yet; contiguous deltas merge."""

    def __init__(self, ping_seconds: float, frames: Frames) -> None:
        self._frames = frames
        # what the body waits on: a future of the loop's own, since asyncio.Event.wait looks the running loop
        # up on each call
        self._waiter: asyncio.Future[None] | None = None
        self._woken = False
        self._room = asyncio.Event()
        # in order: contiguous deltas merged, other events as they came
        self._items: list[_Delta | pb.ReplyEvent] = []
        self._end = 0
        self._chars = 0
        # "upstream_ended", or the failure that ended the upstream; None while it runs
        self.ending: str | None = None
        self.failure: Exception | None = None
        self.closing = False
        self.ping_due = False
        self._ping_seconds = ping_seconds
        self._loop = asyncio.get_running_loop()
        self._written_at = self._loop.time()
        self._ping_timer = self._loop.call_at(self._written_at + ping_seconds, self._check_idle)

    def _check_idle(self) -> None:
        now = self._loop.time()
        if now - self._written_at >= self._ping_seconds:
            self.ping_due = True
            self.wake()
            self._written_at = now
        self._ping_timer = self._loop.call_at(self._written_at + self._ping_seconds, self._check_idle)

    def wake(self) -> None:
        self._woken = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def woken(self) -> None:
        """Returns once something is new since it last returned: events, the upstream's end, a ping due, closing."""
        if not self._woken:
            self._waiter = self._loop.create_future()
            await self._waiter
        self._woken = False

    async def put(self, event: pb.ReplyEvent) -> bool:
        """Adds the event; returns whether it was `finished`, the stream's last."""
        while self._chars >= MAX_PENDING_CHARS:
            self._room.clear()
            await self._room.wait()
        kind = event.WhichOneof("event")
        if kind == "delta":
            delta = event.delta
            offset, text = delta.offset, delta.text
            items = self._items
            if items and self._end == offset and isinstance(items[-1], _Delta):
                items[-1].pieces.append(text)
            else:
                items.append(_Delta(offset, [text]))
            self._end = offset + len(text)
            self._chars += len(text)
        else:
            self._items.append(event)
        self.wake()
        return kind == "finished"

    def end(self, ending: str, failure: Exception | None = None) -> None:
        self.ending, self.failure = ending, failure
        self.wake()

    def take(self) -> tuple[bytes, bool]:
        """Every frame waiting, as one write, and whether it ends with `finished`."""
        frames: list[bytes] = []
        finished = False
        for item in self._items:
            frame = self._merged(item) if isinstance(item, _Delta) else self._frames(item)
            if frame is not None:
                frames.append(frame)
            if isinstance(item, pb.ReplyEvent) and views.is_finished(item):
                finished = True
                break
        self._items.clear()
        self._chars = 0
        self._room.set()
        if self.ping_due:
            self.ping_due = False
            frames.append(sse.PING)
        self._written_at = self._loop.time()
        return b"".join(frames), finished

    def _merged(self, delta: _Delta) -> bytes | None:
        """A merged delta's frame: built directly for our SSE, else framed as one event by the stream's encoding."""
        text = "".join(delta.pieces)
        if self._frames is views.event_frame:
            return views.delta_frame(delta.offset, text)
        return self._frames(convert.delta_event(delta.offset, text))

    def close(self) -> None:
        self._ping_timer.cancel()


async def _pull(events: AsyncIterator[pb.ReplyEvent], outbox: Outbox) -> None:
    """The stream's one reader: upstream events into the outbox, until `finished` or the upstream's end."""
    try:
        async for event in events:
            if await outbox.put(event):
                return
        outbox.end("upstream_ended")
    except Exception as exc:
        outbox.end("upstream_failed", exc)
    finally:
        await close_events(events)


class Relay:
    def __init__(self, ping_seconds: float, metrics: GatewayMetrics) -> None:
        self._ping_seconds = ping_seconds
        self._metrics = metrics
        self._draining = False
        self._closing = False
        self._open: set[Outbox] = set()

    @property
    def draining(self) -> bool:
        """The process is shutting down: health says so, so that new clients go elsewhere."""
        return self._draining

    def begin_drain(self) -> None:
        self._draining = True

    def close_all(self) -> None:
        """End every open stream cleanly after what it is sending, and every later one at once."""
        self._draining = self._closing = True
        for outbox in self._open:
            outbox.closing = True
            outbox.wake()

    async def body(
        self,
        first: pb.ReplyEvent,
        events: AsyncIterator[pb.ReplyEvent],
        route: str,
        frames: Frames = views.event_frame,
    ) -> AsyncIterator[bytes]:
        """`first` (already pulled, a `started`), then the rest of `events` up to `finished`, as `frames` encodes them.

        An event that `frames` gives None for is skipped.
        """
        message_id = first.started.message_id
        gauge = self._metrics.open_streams.labels(route=route)
        gauge.inc()
        outbox = Outbox(self._ping_seconds, frames)
        outbox.closing = self._closing
        self._open.add(outbox)
        reader: asyncio.Task[None] | None = None
        # what ended the stream; a body closed from outside (the client went away) keeps the first value
        ending, failure = "client_gone", None
        try:
            yield frames(first) or b""
            if views.is_finished(first):
                ending = "finished"
                return
            reader = asyncio.create_task(_pull(events, outbox), name=f"relay-{message_id}")
            while True:
                await outbox.woken()
                chunk, finished = outbox.take()
                if chunk:
                    yield chunk
                if finished:
                    ending = "finished"
                    return
                if outbox.ending is not None:
                    ending, failure = outbox.ending, outbox.failure
                    return
                if outbox.closing:
                    ending = "shutdown"
                    return
        finally:
            gauge.dec()
            outbox.close()
            self._open.discard(outbox)
            self._record_end(route, message_id, ending, failure)
            if reader is None:
                await close_events(events)
            elif not reader.done():
                # the source ends itself when its reader is cancelled; nothing here awaits it, since this may
                # run inside a cancelled scope
                reader.cancel()
                reader.add_done_callback(_discard)

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
