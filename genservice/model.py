"""Streaming a reply from any OpenAI-compatible endpoint, and what its failures mean to a user.

The openai client makes the request (auth, retries before the body, its error types); the body's
Server-Sent Events are read here, as bytes (from aiohttp's buffer itself when the transport is
aiohttp), and each chunk is decoded by msgspec straight into the few fields we use. The client's own
stream builds a typed object per chunk, which cost about 25 times as much CPU per token as the rest
of this path. Whatever the model sends ends in a clear ModelFailure or in the end of the stream: a
line that is not JSON, or a chunk shaped unlike a chat completion chunk, ends the reply with every
character before it kept.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import aiohttp
import httpx2
import msgspec
import openai
from openai.types.chat import ChatCompletionMessageParam

from genservice.replies.records import Role, Usage


# made once per token: a Struct takes a sixth of the CPU a frozen dataclass does
class ModelPiece(msgspec.Struct, frozen=True):
    """One chunk of the model's stream: some text, and at the end its finish reason and usage."""

    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None


class ModelFailure(Exception):
    """The model failed; the message is readable and holds no secret."""


# the parts of a chat.completion.chunk that a reply uses; other fields are skipped unread
class _Delta(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    delta: _Delta = msgspec.field(default_factory=_Delta)
    finish_reason: str | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class _Chunk(msgspec.Struct):
    choices: list[_Choice] = msgspec.field(default_factory=list)
    usage: _Usage | None = None
    # an error object sent mid-stream, as OpenAI does; any shape
    error: Any = None


_DECODER = msgspec.json.Decoder(_Chunk)
_DONE = b"[DONE]"


def make_client(base_url: str, api_key: str | None, max_retries: int, idle_timeout: float) -> openai.AsyncOpenAI:
    # the openai client retries connection errors, 408, 409, 429 and 5xx before the first token, with
    # backoff; its timeout bounds each attempt, so a silent endpoint fails instead of hanging
    # over aiohttp (the client's own optional transport): its C parser reads a token's network chunk
    # for about a third of the CPU that the default transport's layers take
    return openai.AsyncOpenAI(
        base_url=base_url,
        api_key=api_key or "unused",
        max_retries=max_retries,
        timeout=idle_timeout,
        http_client=openai.DefaultAioHttpClient(),
    )


def describe_failure(exc: BaseException) -> str:
    """One place that turns the openai client's errors into the `error` a user reads."""
    if isinstance(exc, openai.APITimeoutError) and isinstance(_root_cause(exc), TimeoutError):
        return "the model did not answer in time"
    if isinstance(exc, openai.APIConnectionError):
        # aiohttp's transport reports a refused or dropped connection as a timeout: its cause tells them apart
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


def _root_cause(exc: BaseException) -> BaseException:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _error_message(error: Any) -> str:
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) and message else "an error occurred during streaming"


def pieces_of(data: bytes) -> list[ModelPiece]:
    """The pieces of one event's data. Raises ModelFailure for data that is not a chat completion chunk."""
    try:
        chunk = _DECODER.decode(data)
    except msgspec.ValidationError as exc:
        raise ModelFailure(f"the model sent a chunk unlike a chat completion chunk ({_short(str(exc))})") from None
    except msgspec.DecodeError:
        shown = _short(data.decode(errors="replace"), 60)
        raise ModelFailure(f"the model sent data that is not JSON: {shown!r}") from None
    if chunk.error:
        raise ModelFailure(f"the model failed mid-reply: {_short(_error_message(chunk.error))}")
    usage = None
    if chunk.usage is not None:
        usage = Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens, chunk.usage.total_tokens)
    pieces = [ModelPiece(choice.delta.content or "", choice.finish_reason) for choice in chunk.choices]
    if usage is not None:
        if pieces:
            last = pieces[-1]
            pieces[-1] = ModelPiece(last.text, last.finish_reason, usage)
        else:
            pieces.append(ModelPiece(usage=usage))
    return pieces


class EventData:
    """The data of each Server-Sent Event in a byte stream, as the HTML standard reads it.

    Only `data` fields matter here: comments (`: keep-alive`), `event`, `id` and `retry` are skipped.
    Lines end in LF, CR or CRLF; a blank line ends an event; an event without data is no event.
    (A line ending in a lone CR is read when the next byte comes.)
    """

    def __init__(self) -> None:
        self._partial = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        """The data of every event that `chunk` completes."""
        lines = (self._partial + chunk).splitlines(keepends=True)
        # a line is whole at its LF; one that ends the chunk at a CR waits: an LF may follow
        self._partial = lines.pop() if lines and not lines[-1].endswith(b"\n") else b""
        events: list[bytes] = []
        for line in lines:
            line = line.rstrip(b"\r\n")
            if not line:
                if self._data:
                    events.append(b"\n".join(self._data))
                    self._data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)
        return events


class _IdleTimer:
    """Fails the stream when nothing arrived for `seconds`, at the cost of one assignment per arrival."""

    def __init__(self, scope: asyncio.Timeout, seconds: float) -> None:
        self._scope = scope
        self._seconds = seconds
        self._loop = asyncio.get_running_loop()
        self._last = self._loop.time()
        self._handle = self._loop.call_at(self._last + seconds, self._check)

    def touch(self) -> None:
        self._last = self._loop.time()

    def _check(self) -> None:
        now = self._loop.time()
        if now - self._last >= self._seconds:
            self._scope.reschedule(now)
        else:
            self._handle = self._loop.call_at(self._last + self._seconds, self._check)

    def cancel(self) -> None:
        self._handle.cancel()


def _body_reader(response: httpx2.Response) -> Callable[[], Awaitable[bytes]]:
    """What reads the body's next bytes, b"" at its end.

    Over the aiohttp transport an uncompressed body is read from aiohttp's own buffer, past the four
    async generators the client stacks on it, which cost about as much per network read as the rest
    of this module. A compressed body (the transport leaves decoding to the client), or one from any
    other transport, is read through them. aiohttp errors raised by the direct read are the caller's
    to map.
    """
    # the transport's response, behind the client's wrapper of it; private names, so only a check
    transport_stream = getattr(response.stream, "_stream", None)
    aiohttp_response = getattr(transport_stream, "_aiohttp_response", None)
    if not isinstance(aiohttp_response, aiohttp.ClientResponse):
        return functools.partial(anext, response.aiter_bytes(), b"")
    connection = aiohttp_response.connection
    if connection is not None and connection.protocol is not None:
        # the idle timer guards the body: aiohttp's read timeout replaces a loop timer on every network read
        connection.protocol.read_timeout = None
    encodings = response.headers.get_list("content-encoding", split_commas=True)
    if any(encoding.strip().lower() != "identity" for encoding in encodings):
        return functools.partial(anext, response.aiter_bytes(), b"")
    return aiohttp_response.content.readany


async def stream_reply(
    client: openai.AsyncOpenAI, model: str, history: Sequence[tuple[Role, str]], idle_timeout: float
) -> AsyncIterator[ModelPiece]:
    """The model's reply, piece by piece. Raises ModelFailure; a silence longer than idle_timeout fails."""
    messages: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": content} if role is Role.USER else {"role": "assistant", "content": content}
        for role, content in history
    ]
    request = client.chat.completions.with_streaming_response.create(
        model=model, messages=messages, stream=True, stream_options={"include_usage": True}
    )
    try:
        async with request as response:
            read = _body_reader(response.http_response)
            events = EventData()
            async with asyncio.timeout(None) as scope:
                idle = _IdleTimer(scope, idle_timeout)
                try:
                    while chunk := await read():
                        idle.touch()
                        for data in events.feed(chunk):
                            if data == _DONE:
                                return
                            for piece in pieces_of(data):
                                yield piece
                finally:
                    idle.cancel()
    except (TimeoutError, httpx2.ReadTimeout):
        # the client's own read timeout is the same length: whichever fires first, it is a stall
        raise ModelFailure(f"the model stalled: nothing for {idle_timeout:g}s") from None
    except (openai.OpenAIError, httpx2.HTTPError) as exc:
        raise ModelFailure(describe_failure(exc)) from exc
    except aiohttp.ClientError:
        # read from aiohttp directly: a body cut short, or one that breaks its HTTP framing
        raise ModelFailure("the connection to the model dropped mid-reply") from None
