"""Limits refuse early and clearly, before anything is written: per user (429), per process (503), models (400)."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator

import grpc
import httpx2
import pytest

from genservice.config import GenServiceConfig
from genservice.replies.database import Pool
from genservice.server import running_service
from genservice.v1 import genservice_pb2 as pb
from genservice.v1 import genservice_pb2_grpc as pb_grpc
from tests.support.gateway_harness import gateway_config, http_client, started_gateway
from tests.support.grpc_replies import assert_streaming, collect, read_started
from tests.support.model_server import ModelServer


@pytest.fixture
async def client_for_models(database_url: str, genservice_target: str) -> AsyncIterator[httpx2.AsyncClient]:
    """A gateway in front of the session's genservice, which allows its default model only."""
    async with started_gateway(gateway_config(database_url, genservice_target)) as gateway, http_client(gateway) as c:
        yield c


def user() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


async def messages_of(pool: Pool, user_id: str) -> int:
    async with pool.connection() as conn:
        row = await (await conn.execute("SELECT count(*) AS n FROM messages WHERE user_id = %s", (user_id,))).fetchone()
    assert row is not None
    return int(row["n"])


async def refusal(call: grpc.aio.UnaryStreamCall) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await collect(call)
    return refused.value.code(), refused.value.details() or "", dict(refused.value.trailing_metadata() or ())


async def test_past_a_users_limit_and_past_the_process_limit_a_start_is_refused_with_a_retry_hint(
    genservice_config: GenServiceConfig, database_url: str, pool: Pool, model_server: ModelServer
) -> None:
    config = dataclasses.replace(genservice_config, max_active_replies_per_user=1, max_active_replies=2)
    async with (
        running_service(config) as service,
        grpc.aio.insecure_channel(service.target) as channel,
        started_gateway(gateway_config(database_url, service.target)) as gateway,
        http_client(gateway) as client,
    ):
        stub = pb_grpc.GenerationServiceStub(channel)
        greedy, late = user(), user()
        # the replies that fill the places are held at a gate, so they are running whenever a start is refused
        with model_server.gate() as gate:
            held = f"[[len=3000 {gate.at(0)}]]"
            first = stub.StreamReply(pb.StreamReplyRequest(user_id=greedy, content=f"busy {held}"))
            first_id = (await read_started(first)).message_id
            await assert_streaming(stub, greedy, first_id)
            code, details, trailers = await refusal(
                stub.StreamReply(pb.StreamReplyRequest(user_id=greedy, content="2nd"))
            )
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit" in details
            assert int(trailers["retry-after"]) > 0
            assert await messages_of(pool, greedy) == 2  # the first reply and its question: nothing of the second

            # the gateway's development user fills the process's last place
            async with client.stream("POST", "/v1/replies", json={"content": f"dev {held}"}) as streaming:
                assert streaming.status_code == 200
                full = await client.post("/v1/replies", json={"content": "no room"})
                code, details, trailers = await refusal(
                    stub.StreamReply(pb.StreamReplyRequest(user_id=late, content="x"))
                )
                assert code == grpc.StatusCode.UNAVAILABLE and "limit" in details and int(trailers["retry-after"]) > 0
                assert await messages_of(pool, late) == 0

                # a place frees up, but the development user is at a limit of its own
                await stub.CancelReply(pb.CancelReplyRequest(user_id=greedy, message_id=first_id))
                first.cancel()
                over = await client.post("/v1/replies", json={"content": "one too many"})

    assert full.status_code == 503 and int(full.headers["retry-after"]) > 0
    assert "limit" in full.json()["error"]["message"]
    assert over.status_code == 429 and int(over.headers["retry-after"]) > 0
    assert over.json()["error"]["code"] == "resource_exhausted"


async def test_a_model_not_allowed_is_invalid_and_nothing_is_written(stub, pool, client_for_models) -> None:
    user_id = user()
    code, details, _ = await refusal(
        stub.StreamReply(pb.StreamReplyRequest(user_id=user_id, content="hi", model="an-expensive-model"))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "an-expensive-model" in details
    assert await messages_of(pool, user_id) == 0
    answer = await client_for_models.post("/v1/replies", json={"content": "hi", "model": "an-expensive-model"})
    assert answer.status_code == 400 and "not allowed" in answer.json()["error"]["message"]


def test_allowed_models_default_to_openai_model_alone() -> None:
    config = GenServiceConfig.from_env({"OPENAI_MODEL": "small"})
    assert config.allows("small") and not config.allows("large")
    config = GenServiceConfig.from_env({"OPENAI_MODEL": "small", "ALLOWED_MODELS": "small, large"})
    assert config.allows("large") and not config.allows("huge")
    assert GenServiceConfig.from_env({"ALLOWED_MODELS": "*"}).allows("anything")
    assert GenServiceConfig.from_env({}).max_reply_chars == 2_000_000
    assert GenServiceConfig.from_env({}).max_active_replies_per_user == 8
