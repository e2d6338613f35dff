"""A client's chat through StreamReply: chat ids, the client's message ids, regenerate, retries while a reply runs."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest

from genservice.replies import queries
from genservice.replies.chats import chat_conversation_id
from genservice.replies.records import ChatMessage, Role
from genservice.v1 import genservice_pb2 as pb
from tests.support.grpc_replies import collect, joined
from tests.support.model_server import ModelServer, expected_reply


def user() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


def chat() -> str:
    return f"chat/{uuid.uuid4().hex[:8]}"


async def send(stub, user_id: str, chat_id: str, content: str, **fields) -> list[pb.ReplyEvent]:
    return await collect(
        stub.StreamReply(pb.StreamReplyRequest(user_id=user_id, chat_id=chat_id, content=content, **fields))
    )


async def test_a_chat_id_is_one_conversation_per_user_and_keeps_the_clients_message_ids(stub, pool):
    owner, other, chat_id = user(), user(), chat()
    first = await send(stub, owner, chat_id, "first", client_message_id="client-1")
    second = await send(stub, owner, chat_id, "second", client_message_id="client-2")
    stranger = await send(stub, other, chat_id, "mine")

    conversation_id = first[0].started.conversation_id
    assert conversation_id == second[0].started.conversation_id == chat_conversation_id(owner, chat_id)
    assert stranger[0].started.conversation_id != conversation_id
    assert await queries.chat_messages(pool, owner, conversation_id) == [
        ChatMessage("client-1", Role.USER, "first"),
        ChatMessage(first[0].started.message_id, Role.ASSISTANT, expected_reply("first")),
        ChatMessage("client-2", Role.USER, "second"),
        ChatMessage(second[0].started.message_id, Role.ASSISTANT, expected_reply("second")),
    ]
    assert await queries.chat_messages(pool, other, conversation_id) == []


async def test_regenerate_answers_the_last_message_again_and_supersedes_the_old_reply(
    stub, pool, model_server: ModelServer
):
    user_id, chat_id = user(), chat()
    await send(stub, user_id, chat_id, "a question", client_message_id="q1")
    old = await send(stub, user_id, chat_id, "the last question", client_message_id="q2")
    new = await send(stub, user_id, chat_id, "", regenerate=True)

    assert new[0].started.message_id != old[0].started.message_id
    assert new[-1].finished.message.status == pb.MESSAGE_STATUS_COMPLETE
    assert joined(new) == expected_reply("the last question")
    listed = await queries.chat_messages(pool, user_id, chat_conversation_id(user_id, chat_id))
    assert [(m.id, m.role) for m in listed][2:] == [("q2", Role.USER), (new[0].started.message_id, Role.ASSISTANT)]
    # the model is asked the same question, without the superseded answer
    asked = [r["messages"] for r in model_server.requests if r["messages"][-1]["content"] == "the last question"]
    assert len(asked) == 2
    assert asked[1] == asked[0]
    latest = await queries.latest_reply(pool, user_id, chat_conversation_id(user_id, chat_id))
    assert latest is not None and latest.id == new[0].started.message_id


async def test_regenerate_in_a_chat_without_messages_is_refused_and_creates_nothing(stub, pool):
    user_id, chat_id = user(), chat()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await send(stub, user_id, chat_id, "", regenerate=True)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT count(*) AS n FROM conversations WHERE id = %s", (chat_conversation_id(user_id, chat_id),)
        )
        row = await cursor.fetchone()
    assert row is not None and row["n"] == 0


@pytest.mark.parametrize(
    "fields",
    [
        {"chat_id": "c", "conversation_id": str(uuid.uuid4()), "content": "hi"},
        {"chat_id": "c" * 201, "content": "hi"},
        {"chat_id": "c", "client_message_id": "m\x00", "content": "hi"},
        {"regenerate": True},
    ],
)
async def test_bad_chat_fields_are_invalid(stub, fields):
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await collect(stub.StreamReply(pb.StreamReplyRequest(user_id=user(), **fields)))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_retry_that_interrupts_attaches_to_its_own_reply_instead_of_stopping_it(
    stub, model_server: ModelServer
):
    user_id, chat_id, key = user(), chat(), uuid.uuid4().hex
    await send(stub, user_id, chat_id, "before")
    content = "retried [[len=1500 chunk=5 delay=0.004]]"
    request = pb.StreamReplyRequest(user_id=user_id, chat_id=chat_id, content=content, request_id=key, interrupt=True)
    results = await asyncio.gather(*(collect(stub.StreamReply(request)) for _ in range(3)))

    assert len({events[0].started.message_id for events in results}) == 1
    for events in results:
        assert events[-1].finished.message.status == pb.MESSAGE_STATUS_COMPLETE
        assert joined(events) == expected_reply(content)
    assert len([r for r in model_server.requests if r["messages"][-1]["content"] == content]) == 1
