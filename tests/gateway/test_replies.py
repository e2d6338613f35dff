"""A browser's story through the gateway: start a reply, lose the connection, come back, on any gateway."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import httpx2

from gateway.server import RunningGateway
from genservice.replies.database import Pool
from tests.support.gateway_harness import (
    SLOW,
    Comment,
    Event,
    content,
    gateway_config,
    http_client,
    joined,
    last_id,
    listener_pids,
    metric,
    read_all,
    reply_text,
    started_gateway,
    stream_events,
    stream_items,
    until,
)


async def started_and_some_deltas(events: AsyncGenerator[Event, None], deltas: int) -> tuple[Event, list[Event]]:
    started = await anext(events)
    assert started.event == "started"
    got = [await anext(events) for _ in range(deltas)]
    assert all(e.event == "delta" for e in got)
    return started, got


async def test_a_reply_streams_started_deltas_and_finished(client: httpx2.AsyncClient) -> None:
    message = content("hello", "[[len=700 chunk=7]]")
    async with client.stream("POST", "/v1/replies", json={"content": message}) as response:
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-cache"
        events = await read_all(response)
    kinds = [e.event for e in events]
    assert kinds[0] == "started" and kinds[-1] == "finished" and set(kinds[1:-1]) == {"delta"}
    started, finished = events[0].json(), events[-1].json()["message"]
    assert set(started) == {"message_id", "conversation_id"}
    text = joined(events, start=0)
    assert text == finished["content"] == reply_text(message)
    assert finished["id"] == started["message_id"] and finished["conversation_id"] == started["conversation_id"]
    assert finished["status"] == "complete" and finished["role"] == "assistant"
    assert finished["created_at"] <= finished["updated_at"]

    saved = (await client.get(f"/v1/messages/{started['message_id']}")).json()
    assert saved == finished
    listing = (await client.get(f"/v1/conversations/{started['conversation_id']}/messages")).json()
    assert [(m["role"], m["content"]) for m in listing["messages"]] == [("user", message), ("assistant", text)]
    conversations = (await client.get("/v1/conversations", params={"page_size": 100})).json()
    assert started["conversation_id"] in [c["id"] for c in conversations["conversations"]]
    assert isinstance(conversations["next_page_token"], str)


async def test_a_follow_up_in_the_same_conversation(client: httpx2.AsyncClient) -> None:
    first = content("first", "[[len=50]]")
    async with client.stream("POST", "/v1/replies", json={"content": first}) as response:
        conversation_id = (await read_all(response))[0].json()["conversation_id"]
    second = content("second", "[[len=60]]")
    body = {"content": second, "conversation_id": conversation_id, "request_id": "r-" + second}
    async with client.stream("POST", "/v1/replies", json=body) as response:
        events = await read_all(response)
    assert events[0].json()["conversation_id"] == conversation_id
    assert events[-1].json()["message"]["content"] == reply_text(second)


async def test_a_closed_tab_does_not_stop_the_reply(client: httpx2.AsyncClient) -> None:
    message = content("closed tab", SLOW)
    async with asyncio.timeout(10):
        async with client.stream("POST", "/v1/replies", json={"content": message}) as response:
            started, _ = await started_and_some_deltas(stream_events(response), 2)
        # the connection is gone: the gateway lets go of its gRPC call, and the reply goes on in genservice
        message_id = started.json()["message_id"]

        async def reply_stream_closed() -> bool:
            return await metric(client, 'gateway_open_streams{route="reply"}') == 0

        await until(reply_stream_closed)
        assert await metric(client, 'gateway_streams_ended_early_total{reason="client_gone"}') >= 1
        async with client.stream("GET", f"/v1/messages/{message_id}/events") as response:
            events = await read_all(response)
    finished = events[-1].json()["message"]
    assert finished["status"] == "complete"
    assert joined(events, start=0) == finished["content"] == reply_text(message)


async def test_resuming_with_last_event_id_at_several_cuts_joins_exactly(client: httpx2.AsyncClient) -> None:
    message = content("cuts", SLOW)
    expected = reply_text(message)
    text = ""
    async with asyncio.timeout(15):
        async with client.stream("POST", "/v1/replies", json={"content": message}) as response:
            events = stream_events(response)
            started, deltas = await started_and_some_deltas(events, 3)
            await events.aclose()
        message_id = started.json()["message_id"]
        text += joined(deltas, start=0)
        cut_id = last_id(deltas)
        assert cut_id == str(len(text))
        # resume mid-reply, twice, each time leaving after a few deltas
        for _ in range(2):
            headers = {"Last-Event-ID": cut_id}
            async with client.stream("GET", f"/v1/messages/{message_id}/events", headers=headers) as response:
                events = stream_events(response)
                _, deltas = await started_and_some_deltas(events, 2)
                await events.aclose()
            text += joined(deltas, start=len(text))
            cut_id = last_id(deltas)

        async def unsubscribed() -> bool:
            return await metric(client, "gateway_listener_subscriptions") == 0

        # the abandoned streams let go of their subscriptions
        await until(unsubscribed)
        # then to the end; the query offset is ignored when Last-Event-ID is present
        headers = {"Last-Event-ID": cut_id}
        url = f"/v1/messages/{message_id}/events?offset=0"
        async with client.stream("GET", url, headers=headers) as response:
            rest = await read_all(response)
        text += joined(rest, start=len(text))
        assert text == expected
        assert rest[-1].json()["message"]["content"] == expected

        # a finished message: from its end (nothing more), from the middle, from just after an astral character
        astral = next(i + 1 for i, ch in enumerate(expected) if ord(ch) > 0xFFFF)
        for cut in (len(expected), len(expected) // 2, astral, 0):
            async with client.stream(
                "GET", f"/v1/messages/{message_id}/events", headers={"Last-Event-ID": str(cut)}
            ) as response:
                events_after = await read_all(response)
            assert [e.event for e in events_after][0] == "started" and events_after[-1].event == "finished"
            assert joined(events_after, start=cut) == expected[cut:]
        # the same with ?offset=
        async with client.stream("GET", f"/v1/messages/{message_id}/events", params={"offset": 7}) as response:
            assert joined(await read_all(response), start=7) == expected[7:]


async def test_a_reply_started_on_one_gateway_resumes_on_another(
    client: httpx2.AsyncClient, database_url: str, genservice_target: str
) -> None:
    message = content("two gateways", SLOW)
    async with asyncio.timeout(15):
        async with client.stream("POST", "/v1/replies", json={"content": message}) as response:
            events = stream_events(response)
            started, deltas = await started_and_some_deltas(events, 2)
            await events.aclose()
        message_id = started.json()["message_id"]
        cut = last_id(deltas)
        async with started_gateway(gateway_config(database_url, genservice_target)) as other:
            async with http_client(other) as other_client:
                async with other_client.stream(
                    "GET", f"/v1/messages/{message_id}/events", headers={"Last-Event-ID": cut}
                ) as response:
                    rest = await read_all(response)
    assert joined(deltas, start=0) + joined(rest, start=int(cut)) == reply_text(message)
    assert rest[-1].json()["message"]["status"] == "complete"


async def test_many_open_streams_share_one_listen_connection(
    gateway: RunningGateway, client: httpx2.AsyncClient, pool: Pool
) -> None:
    listener = gateway.config.listener_name
    message = content("many followers", "[[len=1500 chunk=5 delay=0.01]]")
    async with client.stream("POST", "/v1/replies", json={"content": message}) as response:
        events = stream_events(response)
        started = await anext(events)
        await events.aclose()
    message_id = started.json()["message_id"]
    streams = 50
    subscribed = asyncio.Barrier(streams + 1)
    texts: list[str] = []

    async def follow(follower: httpx2.AsyncClient) -> None:
        async with follower.stream("GET", f"/v1/messages/{message_id}/events") as response:
            assert response.status_code == 200
            events = stream_events(response)
            first = await anext(events)
            assert first.event == "started"
            await subscribed.wait()
            texts.append(joined([first] + [e async for e in events], start=0))

    async with asyncio.timeout(20), http_client(gateway, limits=httpx2.Limits(max_connections=streams + 5)) as many:
        async with asyncio.TaskGroup() as group:
            for _ in range(streams):
                group.create_task(follow(many))
            await subscribed.wait()
            assert len(await listener_pids(pool, listener)) == 1
            assert await metric(client, "gateway_listener_subscriptions") == streams
            assert await metric(client, 'gateway_open_streams{route="follow"}') == streams
    assert texts == [reply_text(message)] * streams
    assert await metric(client, 'gateway_open_streams{route="follow"}') == 0
    assert await metric(client, "gateway_listener_subscriptions") == 0


async def test_idle_streams_get_pings(client: httpx2.AsyncClient) -> None:
    # the module's gateway pings every 0.5 s; this reply pauses for 1.2 s after its first 10 characters
    message = content("idle", "[[len=30 chunk=5 stall_after=10 stall=1.2]]")
    async with asyncio.timeout(10), client.stream("POST", "/v1/replies", json={"content": message}) as response:
        items = [item async for item in stream_items(response)]
    assert Comment("ping") in items
    events = [item for item in items if isinstance(item, Event)]
    assert joined(events, start=0) == reply_text(message)


async def test_cancel_keeps_the_text_so_far(client: httpx2.AsyncClient) -> None:
    message = content("stop", SLOW)
    async with asyncio.timeout(10):
        async with client.stream("POST", "/v1/replies", json={"content": message}) as response:
            events = stream_events(response)
            started, _ = await started_and_some_deltas(events, 2)
            message_id = started.json()["message_id"]
            cancelled = await client.post(f"/v1/messages/{message_id}/cancel")
            assert cancelled.status_code == 200
            rest = [e async for e in events]
    assert rest[-1].event == "finished"
    final = rest[-1].json()["message"]
    assert final["status"] == "cancelled"
    assert reply_text(message).startswith(final["content"]) and len(final["content"]) < len(reply_text(message))


async def test_a_busy_conversation_refuses_a_second_reply_unless_it_interrupts(client: httpx2.AsyncClient) -> None:
    first = content("busy", SLOW)
    async with asyncio.timeout(10):
        async with client.stream("POST", "/v1/replies", json={"content": first}) as response:
            events = stream_events(response)
            started = (await anext(events)).json()
            await events.aclose()
        second = {"content": content("meanwhile", "[[len=40]]"), "conversation_id": started["conversation_id"]}
        refused = await client.post("/v1/replies", json=second)
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "failed_precondition"
        async with client.stream("POST", "/v1/replies", json={**second, "interrupt": True}) as response:
            assert response.status_code == 200
            replied = await read_all(response)
        assert replied[-1].json()["message"]["content"] == reply_text(second["content"])
        interrupted = (await client.get(f"/v1/messages/{started['message_id']}")).json()
    assert interrupted["status"] == "cancelled"
