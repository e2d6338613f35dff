"""Several genservice processes on one database: any replica serves any message."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from genservice.v1 import genservice_pb2 as pb
from tests.support.grpc_replies import assert_streaming, collect, joined, read_started, read_text
from tests.support.model_server import ModelServer, expected_reply
from tests.support.processes import reply_on_a_genservice_process


@asynccontextmanager
async def reply_on_another_replica(
    database_url: str, model_server: ModelServer, user_id: str, content: str
) -> AsyncIterator[tuple[Any, pb.ReplyStarted]]:
    """A reply started on a second genservice process: its open call and its `started` event."""
    env = {"DATABASE_URL": database_url, "OPENAI_BASE_URL": model_server.base_url}
    request = pb.StreamReplyRequest(user_id=user_id, content=content)
    async with reply_on_a_genservice_process(env, request) as (_, call):
        yield call, await read_started(call)


async def test_a_watcher_on_one_replica_follows_a_generation_on_another(stub, database_url, model_server):
    with model_server.gate() as gate:
        user_id, content = f"user-{uuid.uuid4().hex[:8]}", f"far away [[len=2500 {gate.at(300)}]]"
        async with reply_on_another_replica(database_url, model_server, user_id, content) as (call, started):
            await read_text(call, 300)
            await assert_streaming(stub, user_id, started.message_id)
            # the in-process service runs no generation for it: all it knows comes from Postgres
            watch = stub.WatchReply(pb.WatchReplyRequest(user_id=user_id, message_id=started.message_id, offset=10))
            await read_started(watch)
            gate.release()
            watched = await collect(watch)
            call.cancel()

    assert expected_reply(content)[:10] + joined(watched) == expected_reply(content)
    assert watched[-1].finished.message.status == pb.MESSAGE_STATUS_COMPLETE


async def test_a_stop_asked_on_one_replica_ends_the_generation_on_another(stub, database_url, model_server):
    with model_server.gate() as gate:
        user_id, content = f"user-{uuid.uuid4().hex[:8]}", f"stop over there [[len=6000 {gate.at(300)}]]"
        async with reply_on_another_replica(database_url, model_server, user_id, content) as (call, started):
            received = await read_text(call, 300)
            await assert_streaming(stub, user_id, started.message_id)
            stopped = await stub.CancelReply(pb.CancelReplyRequest(user_id=user_id, message_id=started.message_id))
            rest = await collect(call)

    assert stopped.status == pb.MESSAGE_STATUS_CANCELLED
    # the owner ended it with every character it had, and its caller saw exactly that
    assert stopped.content == received + joined(rest) == expected_reply(content)[:300]
    assert rest[-1].finished.message.status == pb.MESSAGE_STATUS_CANCELLED
