"""A browser's story through the gateway: start a reply, lose the connection, come back, on any gateway."""

from __future__ import annotations

import asyncio

import httpx2

from gateway.server import RunningGateway
from genservice.replies.database import Pool
from tests.support.gateway_harness import (
    Comment,
    Event,
    assert_streaming,
    content,
    forget_owner_address,
    gateway_config,
    http_client,
    joined,
    last_id,
    listener_pids,
    metric,
    read_all,
    read_started,
    read_text,
    read_to_the_gate,
    reply_text,
    started_gateway,
    stream_events,
    stream_items,
    until,
)
from tests.support.model_server import ModelServer


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


async def test_a_closed_tab_does_not_stop_the_reply(client: httpx2.AsyncClient, model_server: ModelServer) -> None:
    with model_server.gate() as gate:
        message = content("closed tab", f"[[len=1500 {gate.at(100)}]]")
        async with asyncio.timeout(10):
            async with client.stream("POST", "/v1/replies", json={"content": message}) as response:
                message_id, _ = await read_to_the_gate(stream_events(response), 100, client)
            # the connection is gone: the gateway lets go of its gRPC call, and the reply goes on in genservice

            async def reply_stream_closed() -> bool:
                return await metric(client, 'gateway_open_streams{route="reply"}') == 0

            await until(reply_stream_closed)
            assert await metric(client, 'gateway_streams_ended_early_total{reason="client_gone"}') >= 1
            gate.release()
            async with client.stream("GET", f"/v1/messages/{message_id}/events") as response:
                events_after = await read_all(response)
    finished = events_after[-1].json()["message"]
    assert finished["status"] == "complete"
    assert joined(events_after, start=0) == finished["content"] == reply_text(message)


async def test_resuming_with_last_event_id_at_several_cuts_joins_exactly(
    client: httpx2.AsyncClient, model_server: ModelServer
) -> None:
    with model_server.gate() as gate:
        message = content("cuts", f"[[len=1500 {gate.at(1000)}]]")
        expected = reply_text(message)
        async with asyncio.timeout(15):
            async with client.stream("POST", "/v1/replies", json={"content": message}) as response:
                message_id, deltas = await read_to_the_gate(stream_events(response), 30, client)
            text = joined(deltas, start=0)
            assert last_id(deltas) == str(len(text))
            # resume mid-reply, twice, each time leaving once the text reaches a further cut
            for cut in (250, 600):
                headers = {"Last-Event-ID": str(len(text))}
                async with client.stream("GET", f"/v1/messages/{message_id}/events", headers=headers) as response:
                    events = stream_events(response)
                    await read_started(events)
                    deltas = await read_text(events, cut - len(text), start=len(text))
                    await events.aclose()
                text += joined(deltas, start=len(text))

            async def unsubscribed() -> bool:
                return await metric(client, "gateway_listener_subscriptions") == 0

            # the abandoned streams let go of their subscriptions
            await until(unsubscribed)
            # every cut so far was made while the reply was being written
            await assert_streaming(client, message_id)
            gate.release()
        # then to the end; the query offset is ignored when Last-Event-ID is present
        headers = {"Last-Event-ID": str(len(text))}
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
    client: httpx2.AsyncClient, database_url: str, genservice_target: str, model_server: ModelServer
) -> None:
    with model_server.gate() as gate:
        message = content("two gateways", f"[[len=1500 {gate.at(200)}]]")
        async with asyncio.timeout(15):
            async with client.stream("POST", "/v1/replies", json={"content": message}) as response:
                message_id, deltas = await read_to_the_gate(stream_events(response), 50, client)
            cut = last_id(deltas)
            async with started_gateway(gateway_config(database_url, genservice_target)) as other:
                async with http_client(other) as other_client:
                    async with other_client.stream(
                        "GET", f"/v1/messages/{message_id}/events", headers={"Last-Event-ID": cut}
                    ) as response:
                        events = stream_events(response)
                        await read_started(events)
                        await assert_streaming(client, message_id)
                        gate.release()
                        rest = [event async for event in events]
    assert joined(deltas, start=0) + joined(rest, start=int(cut)) == reply_text(message)
    assert rest[-1].json()["message"]["status"] == "complete"


async def test_many_open_streams_share_one_listen_connection(
    gateway: RunningGateway, client: httpx2.AsyncClient, pool: Pool, model_server: ModelServer
) -> None:
    listener = gateway.config.listener_name
    gate = model_server.gate()
    message = content("many followers", f"[[len=1500 {gate.at(100)}]]")
    async with client.stream("POST", "/v1/replies", json={"content": message}) as response:
        events = stream_events(response)
        message_id = (await read_started(events))["message_id"]
        await events.aclose()
    await forget_owner_address(pool, client, message_id)
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

    limits = httpx2.Limits(max_connections=streams + 5)
    with gate:
        async with asyncio.timeout(20), http_client(gateway, limits=limits) as many, asyncio.TaskGroup() as group:
            for _ in range(streams):
                group.create_task(follow(many))
            await subscribed.wait()
            await assert_streaming(client, message_id)
            assert len(await listener_pids(pool, listener)) == 1
            assert await metric(client, "gateway_listener_subscriptions") == streams
            assert await metric(client, 'gateway_open_streams{route="follow"}') == streams
            gate.release()
    assert texts == [reply_text(message)] * streams
    assert await metric(client, 'gateway_open_streams{route="follow"}') == 0
    assert await metric(client, "gateway_listener_subscriptions") == 0


async def test_idle_streams_get_pings(client: httpx2.AsyncClient, model_server: ModelServer) -> None:
    # the module's gateway pings every 0.5 s; this reply is held after its first 10 characters until a ping comes
    with model_server.gate() as gate:
        message = content("idle", f"[[len=30 {gate.at(10)}]]")
        items: list[Event | Comment] = []
        async with asyncio.timeout(10), client.stream("POST", "/v1/replies", json={"content": message}) as response:
            async for item in stream_items(response):
                items.append(item)
                if item == Comment("ping"):
                    gate.release()
    assert Comment("ping") in items
    events = [item for item in items if isinstance(item, Event)]
    assert joined(events, start=0) == reply_text(message)


async def test_cancel_keeps_the_text_so_far(client: httpx2.AsyncClient, model_server: ModelServer) -> None:
    with model_server.gate() as gate:
        message = content("stop", f"[[len=1500 {gate.at(100)}]]")
        async with asyncio.timeout(10):
            async with client.stream("POST", "/v1/replies", json={"content": message}) as response:
                events = stream_events(response)
                message_id, deltas = await read_to_the_gate(events, 100, client)
                cancelled = await client.post(f"/v1/messages/{message_id}/cancel")
                assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
                rest = [e async for e in events]
    assert rest[-1].event == "finished"
    final = rest[-1].json()["message"]
    assert final["status"] == "cancelled"
    # every character the generation had, and not one more
    assert final["content"] == joined(deltas + rest, start=0) == reply_text(message)[:100]


async def test_a_busy_conversation_refuses_a_second_reply_unless_it_interrupts(
    client: httpx2.AsyncClient, model_server: ModelServer
) -> None:
    with model_server.gate() as gate:
        first = content("busy", f"[[len=1500 {gate.at(50)}]]")
        async with asyncio.timeout(10):
            async with client.stream("POST", "/v1/replies", json={"content": first}) as response:
                events = stream_events(response)
                started = await read_started(events)
                await events.aclose()
            await gate.reached()
            await assert_streaming(client, started["message_id"])
            second = {"content": content("meanwhile", "[[len=40]]"), "conversation_id": started["conversation_id"]}
            refused = await client.post("/v1/replies", json=second)
            assert refused.status_code == 409 and refused.json()["error"]["code"] == "failed_precondition"
            async with client.stream("POST", "/v1/replies", json={**second, "interrupt": True}) as response:
                assert response.status_code == 200
                replied = await read_all(response)
            assert replied[-1].json()["message"]["content"] == reply_text(second["content"])
            interrupted = (await client.get(f"/v1/messages/{started['message_id']}")).json()
    assert interrupted["status"] == "cancelled"
