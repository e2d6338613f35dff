"""demo-llm's replies: a canned, friendly text that quotes the user, typed a few characters at a time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.responses import Response

from genservice.demo_llm.config import DemoLLMConfig
from genservice.demo_llm.wire import ChatRequest, completion_response, event_stream, openai_app, stream_events


def demo_reply_text(user_text: str) -> str:
    words = user_text.split()
    quote = " ".join(words[:6])[:60] + ("…" if len(words) > 6 else "")
    opener = f"Thanks for your message “{quote}”." if quote else "Hello! Your message looks empty, so I'll just say hi."
    return (
        f"{opener} I'm an offline demo model running right here on this machine 🚀, with no real language model "
        "and no network behind me: just a café-style placeholder that types a few characters at a time.\n\n"
        "That makes me handy for trying the chat out. Close the tab, reload the page or come back later, and this "
        "reply should still be here, picking up where it left off. Ask again and you'll get the same answer, "
        "word for word. Have a nice day! ✨"
    )


async def paced(text: str, chunk_chars: int, delay: float) -> AsyncIterator[str]:
    """`text` in pieces of `chunk_chars` code points, each after `delay` seconds."""
    for start in range(0, len(text), chunk_chars):
        await asyncio.sleep(delay)
        yield text[start : start + chunk_chars]


def create_app(config: DemoLLMConfig) -> Starlette:
    def respond(request: ChatRequest) -> Response:
        text = demo_reply_text(request.last_user_text)
        if not request.stream:
            return completion_response(request, text)
        return event_stream(stream_events(request, paced(text, config.chunk_chars, config.delay)))

    return openai_app(respond)
