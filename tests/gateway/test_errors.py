"""What a client gets when something is wrong: its input, its token, or a backend. Always JSON, never a traceback."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import Any

import httpx2
import jwt
import pytest

from gateway.server import RunningGateway
from tests.support.gateway_harness import (
    closed_port,
    content,
    gateway_config,
    http_client,
    metric,
    read_all,
    reply_text,
    started_gateway,
)

SECRET = "a-test-secret-that-is-long-enough-for-hs256"


def assert_error(response: httpx2.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert "Traceback" not in response.text
    if code is not None:
        assert error["code"] == code
    return dict(error)


async def test_bodies_that_are_not_a_reply_request(client: httpx2.AsyncClient) -> None:
    assert_error(await client.post("/v1/replies", content=b"{not json", headers=json_type()), 400)
    assert_error(await client.post("/v1/replies", content=b"\xff\xfe", headers=json_type()), 400)
    assert_error(await client.post("/v1/replies", content=b'{"content": "hi"}', headers=text_type()), 400)
    assert_error(await client.post("/v1/replies", content=b'{"content": "hi"}'), 400)
    assert_error(await client.post("/v1/replies", json=["content"]), 422)
    assert_error(await client.post("/v1/replies", json={}), 422)
    assert_error(await client.post("/v1/replies", json={"content": 42}), 422)
    assert_error(await client.post("/v1/replies", json={"content": "hi", "conversation_id": 7}), 422)
    assert_error(await client.post("/v1/replies", json={"content": "hi", "interrupt": "no"}), 422)
    assert_error(await client.post("/v1/replies", content=b"[" * 100_000, headers=json_type()), 400)
    # genservice's own checks come back as 400 with its message
    assert (
        "empty"
        in assert_error(await client.post("/v1/replies", json={"content": "  "}), 400, "invalid_argument")["message"]
    )
    bad_conversation = {"content": "hi", "conversation_id": "nope"}
    assert_error(await client.post("/v1/replies", json=bad_conversation), 400, "invalid_argument")
    unknown_conversation = {"content": "hi", "conversation_id": str(uuid.uuid4())}
    assert_error(await client.post("/v1/replies", json=unknown_conversation), 404, "not_found")


def json_type() -> dict[str, str]:
    return {"content-type": "application/json"}


def text_type() -> dict[str, str]:
    return {"content-type": "text/plain"}


async def test_an_oversized_body_is_413_whether_or_not_it_declares_its_length(
    gateway: RunningGateway, client: httpx2.AsyncClient
) -> None:
    limit = gateway.config.max_body_bytes
    body = b'{"content": "' + b"x" * limit + b'"}'
    assert_error(await client.post("/v1/replies", content=body, headers=json_type()), 413, "payload_too_large")

    async def chunks() -> Any:
        for _ in range(limit // 1000 + 2):
            yield b" " * 1000

    # no Content-Length: chunked, cut off once past the limit
    assert_error(await client.post("/v1/replies", content=chunks(), headers=json_type()), 413, "payload_too_large")

    # a body within bounds whose message is longer than a user message may be
    too_long = "é" * (gateway.config.max_content_chars + 1)
    assert_error(await client.post("/v1/replies", json={"content": too_long}), 413, "payload_too_large")


async def test_ids_and_offsets(client: httpx2.AsyncClient) -> None:
    unknown = str(uuid.uuid4())
    for method, path in [
        ("GET", "/v1/messages/{}"),
        ("GET", "/v1/messages/{}/events"),
        ("POST", "/v1/messages/{}/cancel"),
        ("GET", "/v1/conversations/{}/messages"),
    ]:
        assert_error(await client.request(method, path.format("not-an-id")), 400, "invalid_argument")
        assert_error(await client.request(method, path.format(unknown)), 404, "not_found")

    async with client.stream("POST", "/v1/replies", json={"content": content("offsets", "[[len=40]]")}) as response:
        message_id = (await read_all(response))[0].json()["message_id"]
    events = f"/v1/messages/{message_id}/events"
    for bad in ("-1", "abc", "1.5"):
        assert_error(await client.get(events, params={"offset": bad}), 400, "invalid_argument")
        assert_error(await client.get(events, headers={"Last-Event-ID": bad}), 400, "invalid_argument")
    # past the end of a finished message
    assert_error(await client.get(events, params={"offset": 41}), 400, "invalid_argument")
    assert_error(await client.get("/v1/conversations", params={"page_size": "lots"}), 400)


async def test_unknown_routes_and_methods_answer_json(client: httpx2.AsyncClient) -> None:
    assert_error(await client.get("/v1/nothing-here"), 404, "not_found")
    assert_error(await client.get("/v1/replies"), 405, "method_not_allowed")


async def test_the_page_and_its_files(client: httpx2.AsyncClient) -> None:
    page = await client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    scripts = re.findall(r'<script src="([^"]+)"', page.text)
    assert scripts == ["/static/vendor/marked.umd.js", "/static/vendor/purify.min.js", "/static/app.js"]
    for path in scripts:
        script = await client.get(path)
        assert script.status_code == 200 and "javascript" in script.headers["content-type"], path
    style = await client.get("/static/style.css")
    assert style.status_code == 200 and style.headers["content-type"].startswith("text/css")
    assert (await client.get("/static/missing.js")).status_code == 404
    assert (await client.get("/static/../config.py")).status_code == 404


async def test_health_and_metrics(client: httpx2.AsyncClient) -> None:
    health = await client.get("/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    metrics = await client.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    for name in ("gateway_open_streams", "gateway_replies_started_total", "gateway_listener_connected 1.0"):
        assert name in metrics.text


async def test_metrics_count_the_pool_checkouts(client: httpx2.AsyncClient) -> None:
    before = await metric(client, "gateway_db_checkouts_total")
    # following a message looks it up in Postgres through the gateway's own pool
    missing = await client.get(f"/v1/messages/{uuid.uuid4()}/events")
    assert missing.status_code == 404, missing.text
    assert await metric(client, "gateway_db_checkouts_total") > before
    assert await metric(client, "gateway_db_checkout_waits_total") == 0


async def test_an_unreachable_genservice_is_503_at_once(database_url: str) -> None:
    config = gateway_config(database_url, f"127.0.0.1:{closed_port()}", genservice_timeout_seconds=5.0)
    async with started_gateway(config) as running, http_client(running) as client:
        for _ in range(2):  # the first call connects, the second finds the channel failing
            began = time.monotonic()
            refused = await client.post("/v1/replies", json={"content": "hi"})
            assert_error(refused, 503, "unavailable")
            assert time.monotonic() - began < 2.0
            assert int(refused.headers["retry-after"]) > 0
        assert_error(await client.get(f"/v1/messages/{uuid.uuid4()}"), 503, "unavailable")
        health = await client.get("/healthz")
        assert health.status_code == 503
        assert health.json()["checks"] == {"postgres": "ok", "genservice": "unavailable", "listener": "ok"}
        # resuming is served from Postgres, so it does not need genservice: an unknown message is still a 404
        assert_error(await client.get(f"/v1/messages/{uuid.uuid4()}/events"), 404)


def token(sub: str, secret: str = SECRET, **claims: Any) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 600, **claims}, secret, algorithm="HS256")


@pytest.fixture(scope="module")
async def secured(database_url: str, genservice_target: str) -> Any:
    async with started_gateway(gateway_config(database_url, genservice_target, jwt_secret=SECRET)) as running:
        yield running


async def test_with_a_secret_every_v1_request_needs_a_valid_token(secured: RunningGateway) -> None:
    alice = f"alice-{uuid.uuid4().hex[:6]}"
    async with http_client(secured) as client, asyncio.timeout(10):
        assert_error(await client.get("/v1/conversations"), 401, "unauthenticated")
        no_token = await client.post("/v1/replies", json={"content": "hi"})
        assert_error(no_token, 401)
        assert no_token.headers["www-authenticate"].startswith("Bearer")
        for bad in (
            "garbage",
            token(alice, secret="another-secret-that-is-also-long-enough"),
            token(alice, exp=int(time.time()) - 60),
            jwt.encode({"name": alice, "exp": int(time.time()) + 600}, SECRET, algorithm="HS256"),
            jwt.encode({"sub": alice}, SECRET, algorithm="HS256"),  # no exp: a token that never expires
            token(""),
        ):
            assert_error(await client.get("/v1/conversations", headers=bearer(bad)), 401, "unauthenticated")
        assert_error(await client.get("/v1/conversations", headers={"authorization": "Basic eDp5"}), 401)
        # the page, health and metrics are open
        assert (await client.get("/")).status_code == 200
        assert (await client.get("/healthz")).status_code == 200

        message = content("mine", "[[len=30]]")
        async with client.stream(
            "POST", "/v1/replies", json={"content": message}, headers=bearer(token(alice))
        ) as response:
            assert response.status_code == 200
            events = await read_all(response)
        message_id = events[0].json()["message_id"]
        assert events[-1].json()["message"]["content"] == reply_text(message)

        mine = await client.get(f"/v1/messages/{message_id}", headers=bearer(token(alice)))
        assert mine.status_code == 200
        # EventSource cannot set headers: the cookie works as well
        client.cookies.set("access_token", token(alice))
        async with client.stream("GET", f"/v1/messages/{message_id}/events") as response:
            assert response.status_code == 200
            assert (await read_all(response))[-1].event == "finished"
        client.cookies.clear()

        # another user's message is answered as one that does not exist
        bob = bearer(token("bob"))
        assert_error(await client.get(f"/v1/messages/{message_id}", headers=bob), 404, "not_found")
        assert_error(await client.get(f"/v1/messages/{message_id}/events", headers=bob), 404, "not_found")
        assert_error(await client.post(f"/v1/messages/{message_id}/cancel", headers=bob), 404, "not_found")
        conversation_id = events[0].json()["conversation_id"]
        assert_error(await client.get(f"/v1/conversations/{conversation_id}/messages", headers=bob), 404)
        theirs = (await client.get("/v1/conversations", headers=bob)).json()["conversations"]
        assert conversation_id not in [c["id"] for c in theirs]


def bearer(value: str) -> dict[str, str]:
    return {"authorization": f"Bearer {value}"}
