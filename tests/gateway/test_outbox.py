"""The relay's outbox: what waits for a slow client goes as one merged delta, and it holds a bounded amount."""

from __future__ import annotations

import asyncio

from gateway import views
from gateway.relay import MAX_PENDING_CHARS, Outbox
from genservice.v1 import genservice_pb2 as pb


def delta(offset: int, text: str) -> pb.ReplyEvent:
    return pb.ReplyEvent(delta=pb.ReplyDelta(offset=offset, text=text))


async def test_deltas_waiting_for_a_slow_client_go_as_one_delta_then_the_end() -> None:
    outbox = Outbox(ping_seconds=60, frames=views.event_frame)
    try:
        for offset, text in ((0, "ab"), (2, "cd"), (4, "ef")):
            await outbox.put(delta(offset, text))
        assert outbox.take() == (views.delta_frame(0, "abcdef"), False)
        finished = pb.ReplyEvent(finished=pb.ReplyFinished(message=pb.Message(id="m", content="abcdefg")))
        await outbox.put(delta(6, "g"))
        await outbox.put(finished)
        chunk, ended = outbox.take()
        assert ended and chunk == views.delta_frame(6, "g") + (views.event_frame(finished) or b"")
    finally:
        outbox.close()


async def test_a_full_outbox_makes_its_reader_wait_for_the_client() -> None:
    outbox = Outbox(ping_seconds=60, frames=views.event_frame)
    try:
        await outbox.put(delta(0, "x" * MAX_PENDING_CHARS))
        waiting = asyncio.ensure_future(outbox.put(delta(MAX_PENDING_CHARS, "y")))
        await asyncio.sleep(0)
        assert not waiting.done()
        chunk, _ = outbox.take()
        assert chunk == views.delta_frame(0, "x" * MAX_PENDING_CHARS)
        await waiting
        assert outbox.take() == (views.delta_frame(MAX_PENDING_CHARS, "y"), False)
    finally:
        outbox.close()
