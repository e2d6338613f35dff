"""Past GATEWAY_MAX_PENDING_STARTS replies starting at once, a gateway refuses the next start at once, clearly."""

from __future__ import annotations

import asyncio

import psycopg

from genservice.replies.database import Pool
from tests.genservice.test_fencing import waiting_for_a_lock
from tests.support.gateway_harness import gateway_config, http_client, read_all, started_gateway


async def dev_messages(pool: Pool) -> int:
    async with pool.connection() as conn:
        row = await (await conn.execute("SELECT count(*) AS n FROM messages WHERE user_id = 'dev'")).fetchone()
    assert row is not None
    return int(row["n"])


async def test_a_start_past_the_pending_limit_is_refused_with_a_retry_hint_and_the_held_one_completes(
    database_url: str, genservice_target: str, pool: Pool
) -> None:
    config = gateway_config(database_url, genservice_target, max_pending_starts=1)
    async with (
        started_gateway(config) as gateway,
        http_client(gateway) as client,
        await psycopg.AsyncConnection.connect(database_url, autocommit=True) as barrier,
    ):
        async with client.stream("POST", "/v1/replies", json={"content": "hello [[len=10]]"}) as first:
            conversation_id = (await read_all(first))[0].json()["conversation_id"]

        async def held_start() -> list[str]:
            body = {"content": "held [[len=10]]", "conversation_id": conversation_id}
            async with client.stream("POST", "/v1/replies", json=body) as held:
                assert held.status_code == 200
                return [event.event for event in await read_all(held)]

        # a start in a conversation whose row the test holds waits for it, before its first event
        async with barrier.transaction():
            await barrier.execute("SELECT 1 FROM conversations WHERE id = %s FOR UPDATE", (conversation_id,))
            holding = asyncio.create_task(held_start())
            await waiting_for_a_lock(barrier, "genservice", 1)
            before = await dev_messages(pool)
            refused = await client.post("/v1/replies", json={"content": "one too many"})
            assert await dev_messages(pool) == before
        assert (await holding)[-1] == "finished"
        after = await client.post("/v1/replies", json={"content": "room again [[len=10]]"})

    assert refused.status_code == 503 and int(refused.headers["retry-after"]) > 0
    assert refused.json()["error"]["code"] == "unavailable"
    assert "starting on this gateway" in refused.json()["error"]["message"]
    assert after.status_code == 200 and "event: finished" in after.text
