"""One caller's WatchReplies: every live reply it watches on this process, their new events sent together.

A gateway keeps one such stream per genservice, whatever the number of replies it follows there. Each
watched reply marks its watch due when it publishes (on the busy tick, all at once); the stream's one
writer wakes and sends every due watch's new text in one message. Per reply and tick that is a few
microseconds of protobuf, where a stream of its own costs a gRPC message on each side (25 to 100 µs
each, by machine: bench.hops). A caller that reads slowly holds the writer back, and meanwhile each
reply's new text piles up in the generation and goes as one delta: nothing queues per event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from genservice.generation import Cursor, Generation
from genservice.replies import convert
from genservice.v1 import genservice_pb2 as pb

log = logging.getLogger(__name__)

NOT_HERE = "the reply is not running on this process"
ENDED_ELSEWHERE = "the reply ended on another process"


@dataclass(slots=True)
class _Watch:
    watch_id: int
    generation: Generation
    cursor: Cursor
    listener: Callable[[], None]


class ReplyWatches:
    def __init__(self, running: Callable[[str], Generation | None]) -> None:
        self._running = running
        self._watches: dict[int, _Watch] = {}
        # watches with something to send, in the order they became due
        self._due: dict[int, None] = {}
        # events to send before any due text: `started` of new watches, `lost` of refused ones
        self._pending: list[pb.WatchedEvent] = []
        self._wake = asyncio.Event()
        # the caller closed its side: once its last watch ends, so does the stream
        self._requests_ended = False

    def apply(self, request: pb.WatchRepliesRequest) -> None:
        """The caller's new watches and the ones it dropped."""
        for watch in request.watch:
            self._add(watch)
        for watch_id in request.unwatch:
            self._drop(watch_id)

    def _add(self, request: pb.ReplyWatch) -> None:
        watch_id = request.watch_id
        self._drop(watch_id)
        generation = self._running(request.message_id)
        # another user's reply is answered as one that does not run here: the caller's Postgres read says NOT_FOUND
        if generation is None or generation.user_id != request.user_id or generation.final is not None:
            self._pending.append(pb.WatchedEvent(watch_id=watch_id, lost=NOT_HERE))
        else:
            started = pb.ReplyStarted(message_id=generation.message_id, conversation_id=generation.conversation_id)
            self._pending.append(pb.WatchedEvent(watch_id=watch_id, event=pb.ReplyEvent(started=started)))

            def due() -> None:
                self._due[watch_id] = None
                self._wake.set()

            cursor = generation.cursor(max(0, request.offset))
            self._watches[watch_id] = _Watch(watch_id, generation, cursor, due)
            generation.listen(due)
            self._due[watch_id] = None
        self._wake.set()

    def _drop(self, watch_id: int) -> None:
        watch = self._watches.pop(watch_id, None)
        if watch is not None:
            watch.generation.unlisten(watch.listener)
        self._due.pop(watch_id, None)

    def close(self) -> None:
        for watch_id in list(self._watches):
            self._drop(watch_id)

    async def read(self, requests: AsyncIterator[pb.WatchRepliesRequest]) -> None:
        try:
            async for request in requests:
                self.apply(request)
        except Exception as exc:
            # the caller's side broke: the call is over, and gRPC ends the handler that sends
            log.debug("a WatchReplies caller's requests ended with %r", exc)
            return
        self._requests_ended = True
        self._wake.set()

    async def batches(self) -> AsyncIterator[pb.WatchRepliesResponse]:
        """Every watch's new events, as one message each time there are any; done once the caller has
        closed its side and has no watch left."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            response = self._take()
            if response.events:
                yield response
            if self._requests_ended and not self._watches:
                return

    def _take(self) -> pb.WatchRepliesResponse:
        response = pb.WatchRepliesResponse(events=self._pending)
        self._pending = []
        due, self._due = self._due, {}
        for watch_id in due:
            watch = self._watches.get(watch_id)
            if watch is not None:
                self._add_events(response, watch)
        return response

    def _add_events(self, response: pb.WatchRepliesResponse, watch: _Watch) -> None:
        generation, cursor = watch.generation, watch.cursor
        start = cursor.offset
        text = generation.take(cursor)
        if text:
            # built in place: nested constructors copy each submessage, three times the cost per delta
            delta = response.events.add(watch_id=watch.watch_id).event.delta
            delta.offset = start
            delta.text = text
        # the end is published after all of the text, which this take has had
        if generation.final is not None:
            finished = pb.ReplyEvent(finished=pb.ReplyFinished(message=convert.message_to_pb(generation.final)))
            response.events.add(watch_id=watch.watch_id, event=finished)
            self._drop(watch.watch_id)
        elif generation.abandoned:
            response.events.add(watch_id=watch.watch_id, lost=ENDED_ELSEWHERE)
            self._drop(watch.watch_id)
