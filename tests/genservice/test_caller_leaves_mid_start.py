"""A caller that leaves while its reply's start is being written only stops listening: the reply is written and
generated as if it had stayed, never left half-started."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import grpc
import psycopg

from genservice.replies.database import Pool
from genservice.v1 import genservice_pb2 as pb
from genservice.v1 import genservice_pb2_grpc as pb_grpc
from tests.genservice.test_fencing import new_conversation, waiting_for_a_lock
from tests.support.model_server import expected_reply


async def assistant_replies(pool: Pool, conversation_id: str) -> list[tuple[str, str]]:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT status, content FROM messages WHERE conversation_id = %s AND role = 'assistant' ORDER BY seq",
            (conversation_id,),
        )
        return [(row["status"], row["content"]) for row in await cursor.fetchall()]


async def test_a_caller_gone_while_its_start_waits_still_gets_its_reply_written_whole(
    stub: pb_grpc.GenerationServiceStub, database_url: str, pool: Pool
) -> None:
    user_id = f"user-{uuid.uuid4().hex[:8]}"
    conversation_id = await new_conversation(stub, user_id)
    content = "asked, then gone [[len=300]]"
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as barrier:
        async with barrier.transaction():
            # the start waits on the conversation's row, which the test holds, before anything is written
            await barrier.execute("SELECT 1 FROM conversations WHERE id = %s FOR UPDATE", (conversation_id,))
            call = stub.StreamReply(
                pb.StreamReplyRequest(user_id=user_id, conversation_id=conversation_id, content=content)
            )
            reading = asyncio.ensure_future(anext(aiter(call)))
            await waiting_for_a_lock(barrier, "genservice", 1)
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await reading
    # the conversation's first reply, then the one whose caller left
    async with asyncio.timeout(15):
        while len(replies := await assistant_replies(pool, conversation_id)) < 2 or replies[1][0] == "streaming":
            await asyncio.sleep(0.05)
    assert replies[1] == ("complete", expected_reply(content))
