"""A generation's followers: a slow one gets its backlog as one delta, and every follower's text is exact."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from genservice.generation import Abandoned, Generation
from genservice.pacing import Ticker
from genservice.replies.records import MessageRecord, Role, Status
from genservice.writes import StartedReply


def record(content: str, status: Status) -> MessageRecord:
    now = datetime.now(UTC)
    return MessageRecord("m", "c", Role.ASSISTANT, content, status, "", "demo", "", None, now, now)


def generation(ticker: Ticker | None = None) -> Generation:
    return Generation(
        StartedReply("c", record("", Status.STREAMING), [(Role.USER, "hi")], created=True, user_id="u"), ticker
    )


async def test_a_follower_that_did_not_read_gets_its_whole_backlog_as_one_delta() -> None:
    reply = generation()
    follower = reply.follow(0)
    reply.append("ab")
    assert await anext(follower) == (0, "ab")
    for piece in ("cd", "ef", "gh"):
        reply.append(piece)
    # three pieces while the follower was busy elsewhere: one delta
    assert await anext(follower) == (2, "cdefgh")
    reply.append("ij")
    reply.end(record(reply.text, Status.COMPLETE))
    assert await anext(follower) == (8, "ij")
    final = await anext(follower)
    assert isinstance(final, MessageRecord) and final.content == "abcdefghij"
    with pytest.raises(StopAsyncIteration):
        await anext(follower)


async def test_a_waiting_follower_wakes_on_each_piece_and_a_late_one_starts_from_its_offset() -> None:
    reply = generation()
    reply.append("hello ")
    early = reply.follow(0)
    assert await anext(early) == (0, "hello ")
    waiting = asyncio.ensure_future(anext(early))
    await asyncio.sleep(0)
    assert not waiting.done()
    reply.append("world")
    assert await waiting == (6, "world")
    late = reply.follow(3)
    assert await anext(late) == (3, "lo world")
    reply.end(record(reply.text, Status.COMPLETE))
    for follower in (early, late):
        assert isinstance(await anext(follower), MessageRecord)


async def test_a_follower_of_an_abandoned_generation_gets_the_text_it_had_then_goes_to_postgres() -> None:
    reply = generation()
    follower = reply.follow(0)
    reply.append("kept")
    reply.abandon()
    assert await anext(follower) == (0, "kept")
    with pytest.raises(Abandoned):
        await anext(follower)


async def test_a_follower_from_an_offset_past_the_text_so_far_gets_only_what_comes_after_it() -> None:
    reply = generation()
    reply.append("ab")
    follower = reply.follow(5)
    pending = asyncio.ensure_future(anext(follower))
    await asyncio.sleep(0)
    reply.append("cd")
    reply.append("efgh")
    assert await pending == (5, "fgh")
    reply.end(record(reply.text, Status.COMPLETE))
    final = await anext(follower)
    assert isinstance(final, MessageRecord)


async def test_a_paced_generation_holds_pieces_for_the_tick_and_publishes_its_end_at_once() -> None:
    # a tick no test outlasts: a piece held past the end would hang the follower
    reply = generation(Ticker(lambda: 3600.0))
    follower = reply.follow(0)
    async with asyncio.timeout(5):
        waiting = asyncio.ensure_future(anext(follower))
        await asyncio.sleep(0)
        reply.append("ab")
        reply.append("cd")
        for _ in range(5):
            await asyncio.sleep(0)
        assert not waiting.done()
        # a follower attaching now gets every piece, published or not
        late = reply.follow(1)
        assert await anext(late) == (1, "bcd")
        reply.append("ef")
        reply.end(record(reply.text, Status.COMPLETE))
        assert await waiting == (0, "abcdef")
        assert await anext(late) == (4, "ef")
        for each in (follower, late):
            final = await anext(each)
            assert isinstance(final, MessageRecord) and final.content == "abcdef"


async def test_paced_generations_publish_together_on_one_tick() -> None:
    ticker = Ticker(lambda: 0.05)
    replies = [generation(ticker), generation(ticker)]
    waiting = [asyncio.ensure_future(anext(reply.follow(0))) for reply in replies]
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    held = loop.time()
    for reply, piece in zip(replies, ("a", "b"), strict=True):
        reply.append(piece)
        reply.append(piece.upper())
    assert await asyncio.gather(*waiting) == [(0, "aA"), (0, "bB")]
    assert loop.time() - held >= 0.04
    unpaced = generation(Ticker(lambda: 0.0))
    follower = unpaced.follow(0)
    unpaced.append("now")
    assert await anext(follower) == (0, "now")
