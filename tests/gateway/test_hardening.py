"""The gateway under hostile clients: half-sent requests, too many connections, forged origins, odd tokens, bad text."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from typing import Any

import jwt
import pytest

from gateway.config import GatewayConfig
from gateway.server import RunningGateway
from genservice.replies.settings import ConfigError
from tests.support.gateway_harness import gateway_config, http_client, read_all, started_gateway
from tests.support.processes import free_port

SECRET = "a-test-secret-that-is-long-enough-for-hs256"
PARTNER = "https://partner.example"


def token(**claims: Any) -> str:
    return jwt.encode({"sub": "carol", "exp": int(time.time()) + 600, **claims}, SECRET, algorithm="HS256")


@pytest.fixture(scope="module")
async def hardened(database_url: str, genservice_target: str) -> Any:
    config = gateway_config(
        database_url,
        genservice_target,
        jwt_secret=SECRET,
        jwt_issuer="issuer.example",
        jwt_audience="chat",
        allowed_origins=frozenset({PARTNER}),
        header_timeout_seconds=0.5,
        body_timeout_seconds=0.5,
    )
    async with started_gateway(config) as running:
        yield running


async def closed_within(running: RunningGateway, seconds: float, *sends: bytes, pause: float = 0.0) -> float:
    """Send `sends` (pausing between them), then wait for the gateway to close the connection; how long it took."""
    reader, writer = await asyncio.open_connection(running.host, running.port)
    began = time.monotonic()
    try:
        async with asyncio.timeout(seconds):
            for part in sends:
                writer.write(part)
                await writer.drain()
                await asyncio.sleep(pause)
            while await reader.read(4096):
                pass
    except ConnectionError:
        pass  # closed while we were still sending
    finally:
        writer.close()
    return time.monotonic() - began


async def test_headers_never_finished_are_cut_off_within_the_header_timeout(hardened: RunningGateway) -> None:
    assert await closed_within(hardened, 5, b"GET /v1/conversations HTTP/1.1\r\nHost: x\r\n") < 3
    # a byte at a time does not keep it open either
    trickle = [bytes([b]) for b in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: yes-very-slow-indeed\r\n"]
    assert await closed_within(hardened, 10, *trickle, pause=0.05) < 6


async def test_a_body_that_never_arrives_is_408(hardened: RunningGateway) -> None:
    reader, writer = await asyncio.open_connection(hardened.host, hardened.port)
    head = (
        "POST /v1/replies HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {token(iss='issuer.example', aud='chat')}\r\nContent-Length: 100\r\n\r\n"
    )
    writer.write(head.encode() + b'{"content": ')
    async with asyncio.timeout(5):
        answer = await reader.read(4096)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408")


async def test_tokens_need_exp_and_the_configured_issuer_and_audience(hardened: RunningGateway) -> None:
    good = token(iss="issuer.example", aud="chat")
    async with http_client(hardened) as client:
        assert (await client.get("/v1/conversations", headers={"authorization": f"Bearer {good}"})).status_code == 200
        no_exp = jwt.encode({"sub": "carol", "iss": "issuer.example", "aud": "chat"}, SECRET, algorithm="HS256")
        for bad in (no_exp, token(iss="elsewhere", aud="chat"), token(iss="issuer.example", aud="other"), token()):
            answer = await client.get("/v1/conversations", headers={"authorization": f"Bearer {bad}"})
            assert answer.status_code == 401, bad
        assert "exp" in (await client.get("/v1/conversations", headers={"authorization": f"Bearer {no_exp}"})).text


async def test_a_cookie_post_needs_an_allowed_origin_and_a_bearer_post_needs_none(hardened: RunningGateway) -> None:
    good = token(iss="issuer.example", aud="chat")
    body = {"content": "csrf? [[len=20]]"}
    async with http_client(hardened) as client:
        client.cookies.set("access_token", good)
        for origin in ("https://evil.example", None):
            headers = {} if origin is None else {"origin": origin}
            refused = await client.post("/v1/replies", json=body, headers=headers)
            assert refused.status_code == 403 and refused.json()["error"]["code"] == "permission_denied"
        # a cookie GET is not a change: no Origin needed
        assert (await client.get("/v1/conversations")).status_code == 200
        for origin in (hardened.base_url, PARTNER):
            async with client.stream("POST", "/v1/replies", json=body, headers={"origin": origin}) as answer:
                assert answer.status_code == 200, origin
                assert (await read_all(answer))[-1].event == "finished"
        client.cookies.clear()
        async with client.stream("POST", "/v1/replies", json=body, headers={"authorization": f"Bearer {good}"}) as a:
            assert a.status_code == 200
            await read_all(a)


@pytest.mark.parametrize("raw", [b'{"content": "\\ud800"}', b'{"content": "hi", "model": "\\udfff x"}'])
async def test_a_lone_surrogate_escape_is_400_not_500(hardened: RunningGateway, raw: bytes) -> None:
    headers = {"authorization": f"Bearer {token(iss='issuer.example', aud='chat')}", "content-type": "application/json"}
    async with http_client(hardened) as client:
        answer = await client.post("/v1/replies", content=raw, headers=headers)
    assert answer.status_code == 400 and "surrogate" in answer.json()["error"]["message"]


async def test_past_the_connection_limit_the_gateway_answers_503(database_url: str, genservice_target: str) -> None:
    config = gateway_config(database_url, genservice_target, max_connections=3, header_timeout_seconds=10)
    async with started_gateway(config) as running:
        idle = [await asyncio.open_connection(running.host, running.port) for _ in range(3)]
        try:
            async with http_client(running) as client:
                refused = await client.get("/healthz")
            assert refused.status_code == 503 and int(refused.headers["retry-after"]) > 0
            assert refused.json()["error"]["code"] == "unavailable"
        finally:
            for _, writer in idle:
                writer.close()


def test_a_secret_of_blanks_is_a_start_up_error() -> None:
    with pytest.raises(ConfigError, match="GATEWAY_JWT_SECRET"):
        GatewayConfig.from_env({"GATEWAY_JWT_SECRET": "   "})
    assert GatewayConfig.from_env({"GATEWAY_JWT_SECRET": ""}).jwt_secret is None  # empty is unset: development mode
    with pytest.raises(ConfigError, match="GATEWAY_ALLOWED_ORIGINS"):
        GatewayConfig.from_env({"GATEWAY_ALLOWED_ORIGINS": "evil.example/path"})
    done = subprocess.run(
        [sys.executable, "-m", "gateway.server"],
        env={**os.environ, "GATEWAY_JWT_SECRET": " \t", "GATEWAY_ADDR": f"127.0.0.1:{free_port()}"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0 and "GATEWAY_JWT_SECRET" in done.stderr and "Traceback" not in done.stderr
