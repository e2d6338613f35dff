"""A genservice whose event loop runs late is past its capacity: it refuses starts until it catches up.

genservice runs in the test's own event loop here, so a test that blocks that loop (time.sleep) is
a process whose core has more work than it can do.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid

import grpc
import pytest

from genservice.config import GenServiceConfig
from genservice.loop_lag import CHECK_SECONDS, watching_loop_lag
from genservice.replies.database import Pool
from genservice.server import running_service
from genservice.v1 import genservice_pb2 as pb
from genservice.v1 import genservice_pb2_grpc as pb_grpc
from tests.genservice.test_limits import messages_of, refusal
from tests.support.grpc_replies import collect


async def stall(times: int, seconds: float) -> None:
    """Block the loop `times` times, letting its timers run (late) after each."""
    for _ in range(times):
        time.sleep(seconds)
        # the timers that came due run in the loop's next turn, after this task's
        await asyncio.sleep(0)
        await asyncio.sleep(0)


async def test_the_lag_follows_a_loop_that_runs_late_and_one_stall_moves_it_a_little() -> None:
    with watching_loop_lag() as lag:
        await stall(1, 0.2)
        after_one_stall = lag.seconds
        await stall(10, 0.2)
        overloaded = lag.seconds
        async with asyncio.timeout(5):
            while lag.seconds > 0.01:
                await asyncio.sleep(CHECK_SECONDS)
    assert 0.02 < after_one_stall < 0.1
    # each check came about 150 ms late (a 200 ms stall less the 50 ms it was due after)
    assert overloaded > 0.1


async def test_a_start_while_the_process_runs_late_is_refused_with_a_retry_hint_and_taken_once_it_caught_up(
    genservice_config: GenServiceConfig, pool: Pool
) -> None:
    config = dataclasses.replace(genservice_config, max_loop_lag=0.05)
    user_id = f"user-{uuid.uuid4().hex[:8]}"
    async with running_service(config) as service, grpc.aio.insecure_channel(service.target) as channel:
        stub = pb_grpc.GenerationServiceStub(channel)
        await channel.channel_ready()
        await stall(10, 0.2)
        code, details, trailers = await refusal(
            stub.StreamReply(pb.StreamReplyRequest(user_id=user_id, content="while late"))
        )
        assert code == grpc.StatusCode.UNAVAILABLE and "past its capacity" in details
        assert int(trailers["retry-after"]) > 0
        assert await messages_of(pool, user_id) == 0

        async with asyncio.timeout(10):
            while True:
                try:
                    events = await collect(stub.StreamReply(pb.StreamReplyRequest(user_id=user_id, content="hello")))
                    break
                except grpc.aio.AioRpcError as refused:
                    assert refused.code() == grpc.StatusCode.UNAVAILABLE
                    await asyncio.sleep(CHECK_SECONDS)
    assert events[-1].finished.message.status == pb.MESSAGE_STATUS_COMPLETE
    assert await messages_of(pool, user_id) == 2


@pytest.mark.parametrize("lag_ms", ["0", "250"])
def test_max_loop_lag_is_read_in_milliseconds(lag_ms: str) -> None:
    config = GenServiceConfig.from_env({"MAX_LOOP_LAG_MS": lag_ms})
    assert config.max_loop_lag == int(lag_ms) / 1000
