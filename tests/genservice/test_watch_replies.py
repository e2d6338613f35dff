"""WatchReplies as a gateway uses it: one stream, many replies, each exact; what it cannot serve, it says at once."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict

import grpc

from genservice.v1 import genservice_pb2 as pb
from tests.support.grpc_replies import collect, joined, read_started
from tests.support.model_server import ModelServer, expected_reply


def user() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


class Watching:
    """One WatchReplies call: the events it got, by watch id, until each watch ended."""

    def __init__(self, stub) -> None:
        self.call = stub.WatchReplies()
        self.events: dict[int, list[pb.WatchedEvent]] = defaultdict(list)
        self.ended: set[int] = set()

    async def watch(self, watch_id: int, user_id: str, message_id: str, offset: int = 0) -> None:
        watch = pb.ReplyWatch(watch_id=watch_id, user_id=user_id, message_id=message_id, offset=offset)
        await self.call.write(pb.WatchRepliesRequest(watch=[watch]))

    async def until_ended(self, *watch_ids: int) -> None:
        async with asyncio.timeout(15):
            while not self.ended.issuperset(watch_ids):
                self._take(await self.call.read())

    async def to_the_end(self) -> None:
        """Every response until the stream itself ends."""
        async with asyncio.timeout(15):
            while (response := await self.call.read()) is not grpc.aio.EOF:
                self._take(response)
        assert await self.call.code() == grpc.StatusCode.OK

    def _take(self, response: pb.WatchRepliesResponse) -> None:
        for watched in response.events:
            self.events[watched.watch_id].append(watched)
            if watched.WhichOneof("what") == "lost" or watched.event.HasField("finished"):
                self.ended.add(watched.watch_id)

    def replies(self, watch_id: int) -> list[pb.ReplyEvent]:
        return [w.event for w in self.events[watch_id] if w.WhichOneof("what") == "event"]


async def test_one_stream_carries_several_replies_each_exact(stub, model_server: ModelServer) -> None:
    user_id = user()
    contents = [f"reply {n} [[len=1200 chunk=5 delay=0.002]]" for n in range(3)]
    calls = [stub.StreamReply(pb.StreamReplyRequest(user_id=user_id, content=c)) for c in contents]
    started = [await read_started(call) for call in calls]
    for call in calls:
        call.cancel()
    # the owner says where it runs each reply it started
    assert all(s.owner_addr for s in started)
    watching = Watching(stub)
    for watch_id, reply in enumerate(started, start=1):
        await watching.watch(watch_id, user_id, reply.message_id, offset=watch_id * 10)
    # a caller that has said all it will: the stream ends once its last watch has
    await watching.call.done_writing()
    await watching.to_the_end()
    assert watching.ended == {1, 2, 3}

    for watch_id, content in enumerate(contents, start=1):
        events = watching.replies(watch_id)
        assert events[0].started.message_id == started[watch_id - 1].message_id
        expected = expected_reply(content)
        assert expected[: watch_id * 10] + joined(events) == expected
        assert events[-1].finished.message.status == pb.MESSAGE_STATUS_COMPLETE
        assert events[-1].finished.message.content == expected


async def test_what_does_not_run_here_or_is_not_the_callers_is_lost_at_once(stub) -> None:
    user_id = user()
    ended = await collect(stub.StreamReply(pb.StreamReplyRequest(user_id=user_id, content="short")))
    message_id = ended[0].started.message_id
    watching = Watching(stub)
    await watching.watch(1, user_id, message_id)
    await watching.watch(2, user_id, str(uuid.uuid4()))
    await watching.until_ended(1, 2)

    async with asyncio.timeout(10):
        call = stub.StreamReply(pb.StreamReplyRequest(user_id=user_id, content="[[len=3000 chunk=5 delay=0.002]]"))
        running = await read_started(call)
    # another user's live reply: lost, exactly as one that does not exist
    await watching.watch(3, user(), running.message_id)
    await watching.until_ended(3)
    watching.call.cancel()
    call.cancel()

    for watch_id in (1, 2, 3):
        (only,) = watching.events[watch_id]
        assert only.lost == "the reply is not running on this process"
