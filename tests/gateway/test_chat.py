"""The Vercel AI SDK's own chat client (`ai`, run by Node) against real gateways: what a useChat app sees.

Each test runs one scenario of tests/aisdk/driver.mjs as a subprocess and reads its report: the
client's messages and status, and every request it made with the chunks it received.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx2
import pytest

from gateway.server import RunningGateway
from tests.support import aisdk
from tests.support.gateway_harness import content, gateway_config, reply_text, started_gateway
from tests.support.model_server import ModelServer

# about three seconds of reply: time to drop a connection, resume, or stop under it
PACED = "[[len=3000 chunk=5 delay=0.005]]"
COMPLETE_END = ["text-end", "finish-step", "finish", "[DONE]"]


@pytest.fixture(scope="module", autouse=True)
def node() -> None:
    reason = aisdk.missing()
    if reason is not None:
        if os.environ.get("REQUIRE_NODE"):
            pytest.fail(f"REQUIRE_NODE is set but {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="module")
async def second_gateway(database_url: str, genservice_target: str) -> AsyncIterator[RunningGateway]:
    async with started_gateway(gateway_config(database_url, genservice_target, ping_seconds=0.5)) as running:
        yield running


def chat_id() -> str:
    # a slash, a suffix that is also a route's, and a non-ASCII character: the path must carry it whole
    return f"chats/{uuid.uuid4().hex[:8]}/stream é"


def chat_path(chat: str, suffix: str) -> str:
    return f"/v1/chat/{quote(chat, safe='')}/{suffix}"


async def drive(scenario: str, gateway: RunningGateway, chat: str, **args: Any) -> dict[str, Any]:
    return await aisdk.run_driver(scenario, {"gateway": gateway.base_url, "chatId": chat, **args})


def posts(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in report["requests"] if r["method"] == "POST" and r["url"].endswith("/v1/chat")]


def types(request: dict[str, Any]) -> list[str]:
    return [chunk if chunk == "[DONE]" else chunk["type"] for chunk in request["chunks"]]


def streamed_text(request: dict[str, Any]) -> str:
    return "".join(c["delta"] for c in request["chunks"] if isinstance(c, dict) and c["type"] == "text-delta")


def assert_ui_stream(request: dict[str, Any], ending: list[str]) -> str:
    """The chunks open a message and one text part, carry deltas, end as `ending`; returns its messageId."""
    assert request["status"] == 200
    assert request["streamHeader"] == "v1"
    kinds = types(request)
    assert kinds[:3] == ["start", "start-step", "text-start"]
    assert set(kinds[3 : -len(ending)]) <= {"text-delta"}
    assert kinds[-len(ending) :] == ending
    start = request["chunks"][0]
    assert set(start) == {"type", "messageId"}
    return str(start["messageId"])


async def listed(client: httpx2.AsyncClient, chat: str) -> list[dict[str, Any]]:
    response = await client.get(chat_path(chat, "messages"))
    assert response.status_code == 200
    messages: list[dict[str, Any]] = response.json()
    return messages


def ids_and_roles(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(m["id"], m["role"]) for m in messages]


async def test_send_streams_the_reply_under_the_servers_message_id(gateway, client):
    chat, text = chat_id(), content("hello")
    report = await drive("send", gateway, chat, text=text)

    assert report["status"] == "ready" and report["error"] is None
    user, assistant = report["messages"]
    assert (user["role"], user["text"]) == ("user", text)
    assert (assistant["role"], assistant["text"]) == ("assistant", reply_text(text))
    [post] = posts(report)
    assert assert_ui_stream(post, COMPLETE_END) == assistant["id"]
    assert ids_and_roles(await listed(client, chat)) == [(user["id"], "user"), (assistant["id"], "assistant")]
    saved = (await client.get(f"/v1/messages/{assistant['id']}")).json()
    assert (saved["status"], saved["content"]) == ("complete", reply_text(text))


@pytest.mark.parametrize("last_message_only", [False, True])
async def test_a_conversation_goes_on_whether_the_client_posts_its_history_or_only_the_last_message(
    gateway, client, model_server: ModelServer, last_message_only: bool
):
    chat, texts = chat_id(), [content("first"), content("second"), content("third")]
    report = await drive("send", gateway, chat, text=texts[0], moreTexts=texts[1:], lastMessageOnly=last_message_only)

    assert [m["text"] for m in report["messages"]] == [t for text in texts for t in (text, reply_text(text))]
    assert [p["postedMessages"] for p in posts(report)] == ([1, 1, 1] if last_message_only else [1, 3, 5])
    assert ids_and_roles(await listed(client, chat)) == ids_and_roles(report["messages"])
    [asked] = [r["messages"] for r in model_server.requests if r["messages"][-1]["content"] == texts[2]]
    assert [m["content"] for m in asked] == [t for text in texts[:2] for t in (text, reply_text(text))] + texts[2:]


async def test_a_dropped_connection_resumes_on_the_other_gateway_whole_and_once(gateway, second_gateway, client):
    chat, text = chat_id(), content("resume me", PACED)
    report = await drive(
        "abort-resume",
        gateway,
        chat,
        text=text,
        gateway2=second_gateway.base_url,
        abortAfterDeltas=3,
        resumeDelayMs=300,
    )

    expected = reply_text(text)
    assert not report["endedBeforeAbort"], "the reply ended before the connection was dropped"
    partial = report["partial"]
    assert partial["text"] and expected.startswith(partial["text"]) and partial["text"] != expected
    assert report["status"] == "ready" and report["error"] is None
    user, assistant = report["messages"]
    assert (assistant["id"], assistant["text"]) == (partial["id"], expected)
    assert [p["type"] for p in assistant["parts"]] == ["step-start", "text"]
    [resume] = [r for r in report["requests"] if r["url"].endswith("/stream")]
    assert resume["url"].startswith(second_gateway.base_url)
    assert assert_ui_stream(resume, COMPLETE_END) == partial["id"]
    assert streamed_text(resume) == expected
    # what was saved is replayed from Postgres in one piece, not in save-sized ones: at least what the page
    # loaded before resuming
    loaded = report["loadedMessages"][-1]
    assert loaded["id"] == partial["id"]
    assert len(resume["chunks"][3]["delta"]) >= max(len(loaded["text"]), len(partial["text"]))
    saved = (await client.get(f"/v1/messages/{partial['id']}")).json()
    assert (saved["status"], saved["content"]) == ("complete", expected)
    assert ids_and_roles(await listed(client, chat)) == [(user["id"], "user"), (partial["id"], "assistant")]


async def test_a_chat_with_nothing_running_resumes_with_204(gateway, client):
    chat = chat_id()
    report = await drive("resume-none", gateway, chat)

    assert report["resumeHttpStatus"] == 204
    assert report["messages"] == [] and report["error"] is None
    assert await listed(client, chat) == []


async def test_a_reply_that_ended_moments_ago_is_replayed_and_an_older_one_is_not(gateway, client, pool):
    chat, text = chat_id(), content("just ended")
    sent = await drive("send", gateway, chat, text=text)
    message_id = sent["messages"][-1]["id"]

    replay = await client.get(chat_path(chat, "stream"))
    assert replay.status_code == 200 and replay.headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert replay.text.startswith(f'data: {{"type":"start","messageId":"{message_id}"}}\n\n')
    assert replay.text.endswith('data: {"type":"finish"}\n\ndata: [DONE]\n\n')
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE messages SET updated_at = updated_at - interval '1 minute' WHERE id = %s", (message_id,)
        )
    assert (await client.get(chat_path(chat, "stream"))).status_code == 204


async def test_stop_cancels_the_reply_keeps_its_text_and_ends_the_stream_with_abort(gateway, client):
    chat, text = chat_id(), content("stop me", PACED)
    report = await drive("stop", gateway, chat, text=text, abortAfterDeltas=3)

    assert not report["endedBeforeStop"]
    assert report["stopHttpStatus"] == 200
    stopped = report["stopResponse"]
    assert stopped["status"] == "cancelled"
    [post] = posts(report)
    assert assert_ui_stream(post, ["text-end", "abort", "[DONE]"]) == stopped["id"]
    saved = (await client.get(f"/v1/messages/{stopped['id']}")).json()
    assert saved["status"] == "cancelled"
    assert saved["content"] and reply_text(text).startswith(saved["content"])
    assert streamed_text(post) == saved["content"]
    assert report["messages"][-1]["text"] == saved["content"]


async def test_an_upstream_failure_ends_with_a_readable_error_and_keeps_the_text(gateway, client):
    chat, text = chat_id(), content("fail me", "[[len=2000 error_after=300]]")
    report = await drive("error", gateway, chat, text=text)

    [post] = posts(report)
    message_id = assert_ui_stream(post, ["text-end", "error", "[DONE]"])
    error_text = post["chunks"][-2]["errorText"]
    assert report["status"] == "error" and report["error"] == error_text
    assert error_text and "{" not in error_text and "Traceback" not in error_text
    saved = (await client.get(f"/v1/messages/{message_id}")).json()
    assert (saved["status"], saved["error"]) == ("error", error_text)
    assert saved["content"] == reply_text(text)[:300] == streamed_text(post)


async def test_regenerate_gives_a_new_reply_and_the_chat_lists_only_it(gateway, client, model_server: ModelServer):
    chat, text = chat_id(), content("again")
    report = await drive("regenerate", gateway, chat, text=text)

    first_user, first_reply = report["first"]["messages"]
    user, reply = report["messages"]
    assert user["id"] == first_user["id"]
    assert reply["id"] != first_reply["id"] and reply["text"] == reply_text(text)
    regenerate = posts(report)[1]
    assert assert_ui_stream(regenerate, COMPLETE_END) == reply["id"]
    assert ids_and_roles(await listed(client, chat)) == [(user["id"], "user"), (reply["id"], "assistant")]
    asked = [r for r in model_server.requests if r["messages"][-1]["content"] == text]
    assert [len(r["messages"]) for r in asked] == [1, 1]


async def test_a_retried_post_attaches_to_the_reply_already_made(gateway, model_server: ModelServer):
    chat, text = chat_id(), content("retry me", PACED)
    report = await drive("retry-post", gateway, chat, text=text, userMessageId=f"u-{uuid.uuid4().hex[:6]}")

    first, second = report["streams"]
    for stream in (first, second):
        assert stream["status"] == 200 and stream["done"]
        assert stream["text"] == reply_text(text)
        assert stream["types"][-4:] == COMPLETE_END
    assert first["messageId"] == second["messageId"]
    assert len([r for r in model_server.requests if r["messages"][-1]["content"] == text]) == 1


async def test_chat_routes_answer_plain_json_errors(client):
    chat = chat_id()
    stop = await client.post(chat_path(chat, "stop"))
    assert stop.status_code == 404 and stop.json()["error"]["code"] == "not_found"
    bad = await client.post("/v1/chat", json={"id": chat, "messages": [], "trigger": "submit-message"})
    assert bad.status_code == 422 and "user message" in bad.json()["error"]["message"]
    long = await client.get(chat_path("c" * 201, "messages"))
    assert long.status_code == 400
    history = [{"id": f"m{n}", "role": "user", "parts": [{"type": "text", "text": "x" * 30_000}]} for n in range(10)]
    too_long = await client.post("/v1/chat", json={"id": chat, "messages": history, "trigger": "submit-message"})
    assert too_long.status_code == 413 and "only the last message" in too_long.json()["error"]["message"]
