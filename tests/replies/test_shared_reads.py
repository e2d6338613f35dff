"""Concurrent reads of one message share one query, whatever their offsets; a read already sent is never joined."""

from __future__ import annotations

import asyncio
import uuid

from genservice.replies.database import Pool, open_pool
from genservice.replies.records import Status
from genservice.replies.shared_reads import SharedReads
from genservice.writes import Ending, finish_reply, start_reply


async def started_message(pool: Pool) -> tuple[str, str]:
    user_id = f"u-{uuid.uuid4().hex}"
    reply = await start_reply(
        pool,
        user_id=user_id,
        conversation_id=None,
        content="hi",
        model="demo",
        request_id=None,
        owner="tests",
        lease_seconds=30,
    )
    return user_id, reply.assistant.id


async def test_readers_that_wait_together_share_one_query_whatever_their_offsets(database_url: str, pool: Pool) -> None:
    user_id, message_id = await started_message(pool)
    assert await finish_reply(pool, message_id, "tests", "hello, world", Ending(Status.COMPLETE)) is not None
    async with open_pool(database_url, "tests-shared-reads", max_size=1) as small:
        reads = SharedReads(small)
        async with small.connection():
            small.pop_stats()
            # the only connection is lent: every read below waits, so each later one joins the first
            readers = [asyncio.ensure_future(reads.read_after(user_id, message_id, 0)) for _ in range(20)]
            other_offset = asyncio.ensure_future(reads.read_after(user_id, message_id, 7))
            await asyncio.sleep(0)
        results = await asyncio.gather(*readers, other_offset)
        stats = small.pop_stats()
    assert {result.message_id for result in results} == {message_id}
    assert [result.text for result in results] == ["hello, world"] * 20 + ["world"]
    # one connection for all of them: the read went from offset 0, and each reader took its part
    assert stats.get("requests_num", 0) == 1


async def test_a_reader_that_leaves_does_not_cancel_the_read_of_the_others(database_url: str, pool: Pool) -> None:
    user_id, message_id = await started_message(pool)
    async with open_pool(database_url, "tests-shared-reads-leave", max_size=1) as small:
        reads = SharedReads(small)
        async with small.connection():
            leaving = asyncio.ensure_future(reads.read_after(user_id, message_id, 0))
            staying = asyncio.ensure_future(reads.read_after(user_id, message_id, 0))
            await asyncio.sleep(0)
            leaving.cancel()
        assert (await staying).message_id == message_id
    assert leaving.cancelled()


async def test_a_later_reader_from_an_earlier_offset_lowers_the_shared_read(database_url: str, pool: Pool) -> None:
    user_id, message_id = await started_message(pool)
    assert await finish_reply(pool, message_id, "tests", "hello, world", Ending(Status.COMPLETE)) is not None
    async with open_pool(database_url, "tests-shared-reads-lower", max_size=1) as small:
        reads = SharedReads(small)
        async with small.connection():
            small.pop_stats()
            late = asyncio.ensure_future(reads.read_after(user_id, message_id, 7))
            early = asyncio.ensure_future(reads.read_after(user_id, message_id, 2))
            owner = asyncio.ensure_future(reads.live_owner(user_id, message_id))
            await asyncio.sleep(0)
        assert [(await late).text, (await early).text, await owner] == ["world", "llo, world", None]
        # the text read once for both offsets, the owner once
        assert small.pop_stats().get("requests_num", 0) == 2
