"""One WatchReplies stream per genservice, carrying every live reply this gateway process follows there.

A reply's events reach its sink (the shared reply of live_replies) straight from the stream's reader,
several replies to a message: per reply and tick that costs a few microseconds, where a gRPC stream of
its own cost a message read (25 to 80 µs, by machine). Watches and unwatches wait in one request and go out
together. When the stream fails or ends, every sink on it fails, and the next watch opens a new one.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from typing import Protocol

import grpc

from gateway.upstream import WatchRepliesCall
from genservice.v1 import genservice_pb2 as pb

log = logging.getLogger(__name__)


class WatchLost(Exception):
    """A watch ended without `finished`: the reply is not running there, it ended elsewhere, or the stream failed."""


class Sink(Protocol):
    def apply(self, event: pb.ReplyEvent) -> None: ...

    def fail(self, failure: Exception) -> None: ...


class _OwnerStream:
    def __init__(self, call: WatchRepliesCall, on_end: Callable[[], None]) -> None:
        self._call = call
        self._sinks: dict[int, Sink] = {}
        self._request = pb.WatchRepliesRequest()
        self._ready = asyncio.Event()
        self._on_end = on_end
        self.writer = asyncio.create_task(self._write(), name="owner-stream-writer")
        self.reader = asyncio.create_task(self._read(), name="owner-stream-reader")

    def watch(self, watch_id: int, user_id: str, message_id: str, offset: int, sink: Sink) -> None:
        self._sinks[watch_id] = sink
        self._request.watch.append(
            pb.ReplyWatch(watch_id=watch_id, user_id=user_id, message_id=message_id, offset=offset)
        )
        self._ready.set()

    def unwatch(self, watch_id: int) -> None:
        if self._sinks.pop(watch_id, None) is not None:
            self._request.unwatch.append(watch_id)
            self._ready.set()

    async def _write(self) -> None:
        try:
            while True:
                await self._ready.wait()
                self._ready.clear()
                request, self._request = self._request, pb.WatchRepliesRequest()
                await self._call.write(request)
        except Exception as exc:
            # the reader hears the call end and fails every watch on it
            log.info("writing to an owner's stream failed: %r", exc)
            self._call.cancel()

    async def _read(self) -> None:
        failure: Exception
        try:
            async for response in self._call:
                self._deliver(response)
            failure = WatchLost("the owner's stream ended")
        except grpc.aio.AioRpcError as err:
            failure = WatchLost(f"the owner's stream failed: {err.code().name} {err.details()}")
        except Exception as exc:
            failure = WatchLost(f"the owner's stream failed: {exc!r}")
        finally:
            # no new watch joins this stream from here on: the next one opens another
            self._on_end()
            self.writer.cancel()
            self._call.cancel()
        sinks, self._sinks = self._sinks, {}
        for sink in sinks.values():
            sink.fail(failure)

    def _deliver(self, response: pb.WatchRepliesResponse) -> None:
        for watched in response.events:
            sink = self._sinks.get(watched.watch_id)
            if sink is None:
                # unwatched since it was sent
                continue
            if watched.WhichOneof("what") == "lost":
                del self._sinks[watched.watch_id]
                sink.fail(WatchLost(watched.lost))
                continue
            event = watched.event
            if event.WhichOneof("event") == "finished":
                del self._sinks[watched.watch_id]
            sink.apply(event)

    def close(self) -> None:
        self.reader.cancel()


class OwnerStreams:
    """This process's WatchReplies streams, one per genservice address, opened on first use."""

    def __init__(self, open_call: Callable[[str], WatchRepliesCall]) -> None:
        self._open_call = open_call
        self._streams: dict[str, _OwnerStream] = {}
        self._ids = itertools.count(1)

    def watch(self, owner: str, user_id: str, message_id: str, offset: int, sink: Sink) -> Callable[[], None]:
        """Send the reply's events from `offset` to `sink` until it finishes or fails; the result unwatches."""
        stream = self._streams.get(owner)
        if stream is None:
            stream = self._open(owner)
        watch_id = next(self._ids)
        stream.watch(watch_id, user_id, message_id, offset, sink)
        return lambda: stream.unwatch(watch_id)

    def _open(self, owner: str) -> _OwnerStream:
        def ended() -> None:
            if self._streams.get(owner) is stream:
                del self._streams[owner]

        stream = self._streams[owner] = _OwnerStream(self._open_call(owner), ended)
        return stream

    async def close(self) -> None:
        streams = list(self._streams.values())
        for stream in streams:
            stream.close()
        await asyncio.gather(*(s.reader for s in streams), *(s.writer for s in streams), return_exceptions=True)
