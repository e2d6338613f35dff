"""The tests' model server and the demo-llm program, seen through the real openai client."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from genservice.demo_llm.app import demo_reply_text
from genservice.demo_llm.config import DemoLLMConfig
from tests.support.model_server import ModelServer, expected_reply, parse_directive
from tests.support.processes import free_port, http_process


@pytest.fixture(scope="module")
def model_server() -> Iterator[ModelServer]:
    with ModelServer() as server:
        yield server


@pytest.fixture
async def client(model_server: ModelServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=model_server.base_url, api_key="test", max_retries=0) as client:
        yield client


async def stream_into(client: openai.AsyncOpenAI, content: str, received: list[str]) -> None:
    """Stream a reply to `content`, appending each piece of text to `received` as it arrives."""
    stream = await client.chat.completions.create(
        model="demo", messages=[{"role": "user", "content": content}], stream=True
    )
    async with stream:
        async for chunk in stream:
            received.extend(choice.delta.content or "" for choice in chunk.choices)


async def test_a_streamed_reply_is_the_expected_text_with_usage(
    client: openai.AsyncOpenAI, model_server: ModelServer
) -> None:
    content = "Tell me a story [[len=400 chunk=7 delay=0.001]]"
    history: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": content},
    ]
    async with asyncio.timeout(10):
        stream = await client.chat.completions.create(
            model="demo", messages=history, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
    text = "".join(choice.delta.content or "" for chunk in chunks for choice in chunk.choices)
    assert text == expected_reply(content)
    assert len(text) == 400 and any(ord(c) > 0xFFFF for c in text)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + chunks[-1].usage.completion_tokens > 0
    assert model_server.requests[-1]["messages"] == history


async def test_a_reply_without_a_directive_is_short_and_deterministic(client: openai.AsyncOpenAI) -> None:
    async with asyncio.timeout(10):
        completion = await client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hello"}])
    assert completion.choices[0].message.content == expected_reply("hello") != ""
    assert [model.id async for model in client.models.list()] == ["demo"]


async def test_a_status_fails_before_any_token(client: openai.AsyncOpenAI) -> None:
    received: list[str] = []
    async with asyncio.timeout(10):
        with pytest.raises(openai.RateLimitError):
            await stream_into(client, "hi [[status=429]]", received)
    assert received == []


async def test_error_after_ends_the_stream_with_an_api_error(client: openai.AsyncOpenAI) -> None:
    content = "hi [[len=200 chunk=7 error_after=50]]"
    received: list[str] = []
    async with asyncio.timeout(10):
        with pytest.raises(openai.APIError) as caught:
            await stream_into(client, content, received)
    assert type(caught.value) is openai.APIError
    assert "".join(received) == expected_reply(content)[:50]


async def test_drop_after_breaks_the_connection(client: openai.AsyncOpenAI) -> None:
    content = "hi [[len=200 chunk=7 drop_after=50]]"
    received: list[str] = []
    async with asyncio.timeout(10):
        with pytest.raises(openai.APIConnectionError):
            await stream_into(client, content, received)
    assert "".join(received) == expected_reply(content)[:50]


async def test_flaky_fails_the_first_requests_then_succeeds(client: openai.AsyncOpenAI) -> None:
    content = "hi [[flaky=2 status=503 len=30]]"
    async with asyncio.timeout(10):
        for _ in range(2):
            with pytest.raises(openai.InternalServerError):
                await stream_into(client, content, [])
        received: list[str] = []
        await stream_into(client, content, received)
    assert "".join(received) == expected_reply(content)


async def test_a_bad_directive_is_a_bad_request(client: openai.AsyncOpenAI) -> None:
    async with asyncio.timeout(10):
        with pytest.raises(openai.BadRequestError, match="lenght"):
            await stream_into(client, "hi [[lenght=5]]", [])


async def test_a_gate_holds_the_stream_at_its_count_until_released(
    client: openai.AsyncOpenAI, model_server: ModelServer
) -> None:
    with model_server.gate() as gate:
        content = f"hold on [[len=200 chunk=7 {gate.at(50)}]]"
        received: list[str] = []
        streaming = asyncio.create_task(stream_into(client, content, received))
        try:
            await gate.reached()
            # held: with no pace, the other 150 characters would come at once
            done, _ = await asyncio.wait({streaming}, timeout=0.5)
            assert not done
            assert "".join(received) == expected_reply(content)[:50]
            gate.release()
            async with asyncio.timeout(10):
                await streaming
        finally:
            streaming.cancel()
    assert "".join(received) == expected_reply(content)
    # a released gate lets later streams through
    again: list[str] = []
    async with asyncio.timeout(10):
        await stream_into(client, content, again)
    assert "".join(again) == expected_reply(content)


async def test_a_gate_no_stream_reaches_times_out_and_an_unknown_gate_is_a_bad_request(
    client: openai.AsyncOpenAI, model_server: ModelServer
) -> None:
    with model_server.gate() as gate:
        with pytest.raises(TimeoutError, match=gate.name):
            await gate.reached(seconds=0.1)
    async with asyncio.timeout(10):
        with pytest.raises(openai.BadRequestError, match="no gate named"):
            await stream_into(client, "hi [[gate=nowhere]]", [])
    with pytest.raises(ValueError, match="needs gate"):
        parse_directive("hi [[hold_after=3]]")


async def test_the_demo_llm_program_streams_its_reply_as_openai_does(tmp_path: Path) -> None:
    addr = f"127.0.0.1:{free_port()}"
    args, env = ["-m", "genservice.demo_llm", "--addr", addr], {"DEMO_LLM_DELAY": "0", "DEMO_LLM_CHUNK": "9"}
    question = "What is the weather like in Paris today, please?"
    async with (
        http_process(args, env, tmp_path / "demo-llm.log", f"http://{addr}/v1/models"),
        openai.AsyncOpenAI(base_url=f"http://{addr}/v1", api_key="unused", max_retries=0) as client,
        asyncio.timeout(10),
    ):
        stream = await client.chat.completions.create(
            model="demo",
            messages=[{"role": "user", "content": question}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        whole = await client.chat.completions.create(model="demo", messages=[{"role": "user", "content": question}])
    pieces = [choice.delta.content or "" for chunk in chunks for choice in chunk.choices]
    assert "".join(pieces) == demo_reply_text(question) == whole.choices[0].message.content
    assert max(len(piece) for piece in pieces) == 9
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_demo_llm_help_exits_0() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "genservice.demo_llm", "--help"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert "DEMO_LLM_DELAY" in done.stdout


def test_demo_config_rejects_bad_values() -> None:
    assert DemoLLMConfig.from_env({}) == DemoLLMConfig("127.0.0.1", 8181, 0.05, 4)
    for env, name in [
        ({"DEMO_LLM_CHUNK": "0"}, "DEMO_LLM_CHUNK"),
        ({"DEMO_LLM_DELAY": "-1"}, "DEMO_LLM_DELAY"),
        ({"DEMO_LLM_ADDR": "nowhere"}, "HOST:PORT"),
    ]:
        with pytest.raises(ValueError, match=name):
            DemoLLMConfig.from_env(env)


def test_demo_reply_quotes_the_message() -> None:
    reply = demo_reply_text("What is the weather like in Paris today, please?")
    assert "“What is the weather like in…”" in reply and "offline demo model" in reply and "🚀" in reply
