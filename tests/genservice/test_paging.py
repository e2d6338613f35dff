"""Any conversation can be opened: a 5 MB conversation comes in pages, over gRPC and over HTTP."""

from __future__ import annotations

import uuid

import grpc
import pytest

from genservice.replies.database import Pool
from genservice.v1 import genservice_pb2 as pb
from tests.support.gateway_harness import gateway_config, http_client, started_gateway

# gRPC's default receive limit, which no answer may pass
GRPC_LIMIT = 4 * 1024 * 1024


async def big_conversation(pool: Pool, user_id: str) -> tuple[str, list[str]]:
    """Six messages of about 1 MB each (2-byte characters), the last one still streaming from its saves."""
    conversation_id = str(uuid.uuid4())
    texts = [f"{n}:" + "é" * 500_000 for n in range(6)]
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO conversations (id, user_id, title) VALUES (%s, %s, 'big')", (conversation_id, user_id)
        )
        for n, text in enumerate(texts):
            message_id, last = str(uuid.uuid4()), n == len(texts) - 1
            await conn.execute(
                "INSERT INTO messages (id, conversation_id, user_id, role, content, status) VALUES (%s, %s, %s,"
                " %s, %s, %s)",
                (
                    message_id,
                    conversation_id,
                    user_id,
                    "assistant" if n % 2 else "user",
                    "" if last else text,
                    "streaming" if last else "complete",
                ),
            )
            if last:
                await conn.execute(
                    "INSERT INTO message_saves VALUES (%s, 0, %s), (%s, %s, %s)",
                    (message_id, text[:1000], message_id, 1000, text[1000:]),
                )
    return conversation_id, texts


async def test_list_messages_pages_a_5_mb_conversation(stub, pool):
    user_id = f"user-{uuid.uuid4().hex[:8]}"
    conversation_id, texts = await big_conversation(pool, user_id)
    got: list[str] = []
    token, pages = "", 0
    while True:
        page = await stub.ListMessages(
            pb.ListMessagesRequest(user_id=user_id, conversation_id=conversation_id, page_token=token)
        )
        assert page.ByteSize() < GRPC_LIMIT and page.messages
        got += [m.content for m in page.messages]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert got == texts and pages > 1

    two = await stub.ListMessages(pb.ListMessagesRequest(user_id=user_id, conversation_id=conversation_id, page_size=1))
    assert len(two.messages) == 1 and two.next_page_token
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await stub.ListMessages(
            pb.ListMessagesRequest(user_id=user_id, conversation_id=conversation_id, page_token="nonsense")
        )
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_the_gateway_route_pages_too(database_url, genservice_target, pool):
    conversation_id, texts = await big_conversation(pool, "dev")
    got: list[str] = []
    params: dict[str, str] = {}
    async with started_gateway(gateway_config(database_url, genservice_target)) as gateway, http_client(gateway) as c:
        while True:
            answer = await c.get(f"/v1/conversations/{conversation_id}/messages", params=params)
            assert answer.status_code == 200
            body = answer.json()
            got += [m["content"] for m in body["messages"]]
            if not body["next_page_token"]:
                break
            params = {"page_token": body["next_page_token"]}
        bad = await c.get(f"/v1/conversations/{conversation_id}/messages", params={"page_token": "x"})
    assert got == texts
    assert bad.status_code == 400
