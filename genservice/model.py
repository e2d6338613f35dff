"""Streaming a reply from any OpenAI-compatible endpoint, and what its failures mean to a user."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import httpx2
import openai
from openai.types.chat import ChatCompletionMessageParam

from genservice.replies.records import Role, Usage


@dataclass(frozen=True)
class ModelPiece:
    """One chunk of the model's stream: some text, and at the end its finish reason and usage."""

    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None


class ModelFailure(Exception):
    """The model failed; the message is readable and holds no secret."""


def make_client(base_url: str, api_key: str | None, max_retries: int, idle_timeout: float) -> openai.AsyncOpenAI:
    # the openai client retries connection errors, 408, 409, 429 and 5xx before the first token, with
    # backoff; its timeout bounds each attempt, so a silent endpoint fails instead of hanging
    return openai.AsyncOpenAI(
        base_url=base_url, api_key=api_key or "unused", max_retries=max_retries, timeout=idle_timeout
    )


def describe_failure(exc: BaseException) -> str:
    """One place that turns the openai client's errors into the `error` a user reads."""
    if isinstance(exc, openai.APITimeoutError):
        return "the model did not answer in time"
    if isinstance(exc, openai.APIConnectionError):
        return "could not reach the model (connection failed or dropped)"
    if isinstance(exc, openai.AuthenticationError):
        return "the model refused our credentials (401): check OPENAI_API_KEY"
    if isinstance(exc, openai.PermissionDeniedError):
        return "the model refused the request (403)"
    if isinstance(exc, openai.NotFoundError):
        return "the model or endpoint was not found (404): check OPENAI_MODEL and OPENAI_BASE_URL"
    if isinstance(exc, openai.RateLimitError):
        return "the model is rate limited (429); try again later"
    if isinstance(exc, openai.APIStatusError):
        return f"the model answered with an error (HTTP {exc.status_code})"
    if isinstance(exc, openai.APIError):
        return f"the model failed mid-reply: {_short(exc.message)}"
    if isinstance(exc, httpx2.HTTPError):
        return "the connection to the model dropped mid-reply"
    return f"the model stream failed ({type(exc).__name__})"


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def stream_reply(
    client: openai.AsyncOpenAI, model: str, history: Sequence[tuple[Role, str]], idle_timeout: float
) -> AsyncIterator[ModelPiece]:
    """The model's reply, piece by piece. Raises ModelFailure; a silence longer than idle_timeout fails."""
    messages: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": content} if role is Role.USER else {"role": "assistant", "content": content}
        for role, content in history
    ]
    try:
        stream = await client.chat.completions.create(
            model=model, messages=messages, stream=True, stream_options={"include_usage": True}
        )
    except openai.OpenAIError as exc:
        raise ModelFailure(describe_failure(exc)) from exc
    async with stream:
        chunks = aiter(stream)
        while True:
            try:
                async with asyncio.timeout(idle_timeout):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise ModelFailure(f"the model stalled: nothing for {idle_timeout:g}s") from None
            except (openai.OpenAIError, httpx2.HTTPError) as exc:
                raise ModelFailure(describe_failure(exc)) from exc
            usage = None
            if chunk.usage is not None:
                usage = Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens, chunk.usage.total_tokens)
            for choice in chunk.choices:
                yield ModelPiece(choice.delta.content or "", choice.finish_reason, usage)
                usage = None
            if usage is not None:
                yield ModelPiece(usage=usage)
