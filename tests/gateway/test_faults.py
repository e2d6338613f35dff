"""The gateway under faults: its LISTEN connection killed, Postgres restarted, random input thrown at it."""

from __future__ import annotations

import json
from urllib.parse import quote

import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.server import RunningGateway
from genservice.replies.database import Pool
from tests.support.gateway_harness import (
    content,
    forget_owner_address,
    joined,
    listener_pids,
    metric,
    read_all,
    read_rest,
    read_started,
    read_to_the_gate,
    reply_text,
    stream_events,
    until,
)
from tests.support.model_server import ModelServer
from tests.support.postgres_control import data_directory, pg_ctl


async def test_a_killed_listen_connection_costs_latency_not_text(
    gateway: RunningGateway, client: httpx2.AsyncClient, pool: Pool, model_server: ModelServer
) -> None:
    listener = gateway.config.listener_name
    with model_server.gate() as gate:
        message = content("listener lost", f"[[len=2500 {gate.at(300)}]]")
        async with client.stream("POST", "/v1/replies", json={"content": message}) as response:
            message_id = (await read_started(stream_events(response)))["message_id"]
        await forget_owner_address(pool, client, message_id)
        async with client.stream("GET", f"/v1/messages/{message_id}/events") as response:
            events = stream_events(response)
            _, got = await read_to_the_gate(events, 300, client)
            [pid] = await listener_pids(pool, listener)
            async with pool.connection() as conn:
                await conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
            # the rest of the reply is written after the LISTEN connection died
            gate.release()
            got += await read_rest(events)

    assert got[-1].event == "finished"
    assert joined(got, start=0) == reply_text(message) == got[-1].json()["message"]["content"]

    async def listening_again() -> bool:
        pids = await listener_pids(pool, listener)
        return len(pids) == 1 and pids != [pid]

    await until(listening_again)
    # the notices that woke the stream were timed on their way
    assert await metric(client, "gateway_notification_lag_seconds_count") > 0
    assert await metric(client, "gateway_notification_lag_seconds_sum") >= 0


async def test_a_reply_survives_a_postgres_restart(
    gateway: RunningGateway, client: httpx2.AsyncClient, database_url: str, model_server: ModelServer
) -> None:
    data_dir = await data_directory(database_url)
    if data_dir is None:
        pytest.skip("the tests' Postgres is not on this machine (DATABASE_URL elsewhere): cannot restart it")
    with model_server.gate() as gate:
        message = content("restart", f"[[len=3000 {gate.at(150)}]]")
        async with client.stream("POST", "/v1/replies", json={"content": message}) as response:
            events = stream_events(response)
            message_id, got = await read_to_the_gate(events, 150, client)
            pg_ctl(data_dir, "restart", "-m", "fast")
            # the rest of the reply is written after the restart
            gate.release()
            got += await read_rest(events)

    assert joined(got, start=0) == reply_text(message)
    assert got[-1].json()["message"]["status"] == "complete"
    saved = (await client.get(f"/v1/messages/{message_id}")).json()
    assert saved["content"] == reply_text(message) and saved["status"] == "complete"
    async with client.stream("GET", f"/v1/messages/{message_id}/events?offset=100") as response:
        resumed = await read_all(response)
    assert reply_text(message)[:100] + joined(resumed) == reply_text(message)


ROUTES = [
    ("POST", "/v1/replies"),
    ("GET", "/v1/messages/{id}"),
    ("GET", "/v1/messages/{id}/events"),
    ("POST", "/v1/messages/{id}/cancel"),
    ("GET", "/v1/conversations"),
    ("GET", "/v1/conversations/{id}/messages"),
]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
reply_like = st.fixed_dictionaries(
    {},
    optional={
        "content": json_values,
        "conversation_id": json_values,
        "model": json_values,
        "request_id": json_values,
        "interrupt": json_values,
    },
)


async def count_rows(pool: Pool) -> int:
    async with pool.connection() as conn:
        row = await (
            await conn.execute("SELECT (SELECT count(*) FROM messages) + (SELECT count(*) FROM conversations) AS n")
        ).fetchone()
    assert row is not None
    return int(row["n"])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    route=st.sampled_from(ROUTES),
    some_id=st.text(max_size=40) | st.uuids().map(str),
    body=st.binary(max_size=200)
    | json_values.map(lambda v: json.dumps(v).encode())
    | reply_like.map(lambda v: json.dumps(v).encode()),
    content_type=st.sampled_from(["application/json", "text/plain", "", "application/json; charset=utf-8"]),
    query=st.dictionaries(st.sampled_from(["offset", "page_size", "page_token"]), st.text(max_size=12), max_size=3),
    last_event_id=st.none() | st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=12),
)
async def test_random_input_at_every_route_gets_no_500_and_writes_nothing(
    client: httpx2.AsyncClient, pool: Pool, route, some_id, body, content_type, query, last_event_id
) -> None:
    method, template = route
    path = template.replace("{id}", quote(some_id, safe="") or "x")
    headers = {"content-type": content_type} if content_type else {}
    if last_event_id is not None:
        headers["last-event-id"] = last_event_id
    before = await count_rows(pool)
    request = client.build_request(
        method, path, content=body if method == "POST" else None, params=query, headers=headers
    )
    response = await client.send(request, stream=True)
    try:
        assert response.status_code < 500, (response.status_code, await response.aread())
        if response.status_code >= 400:
            error = json.loads(await response.aread())["error"]
            assert error["code"] and error["message"]
            assert "Traceback" not in error["message"]
    finally:
        await response.aclose()
    if not (method == "POST" and template == "/v1/replies" and response.status_code == 200):
        assert await count_rows(pool) == before
