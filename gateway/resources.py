"""What a running gateway holds, opened once at start in one place and closed in reverse.

The gRPC channels to genservice, the Postgres pool, the process's one LISTEN connection (the
hub), and the small objects built on them. Handlers get them from the request's state.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import cast

from starlette.requests import Request

from gateway.auth import DEV_USER, Authenticator
from gateway.config import MIN_SECRET_BYTES, GatewayConfig
from gateway.live_replies import LiveReplies
from gateway.metrics import GatewayMetrics, HubCollector, PoolCollector
from gateway.owner_streams import OwnerStreams
from gateway.relay import Relay
from gateway.upstream import Upstream, open_upstream
from genservice.replies.database import Pool, open_pool, postgres_url
from genservice.replies.listener import ListenerHub
from genservice.replies.shared_reads import SharedReads

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resources:
    config: GatewayConfig
    upstream: Upstream
    pool: Pool
    # the pool's reads of a message's text, shared by the readers that wait for the same one
    reads: SharedReads
    hub: ListenerHub
    # the one owner stream per live reply, shared by this process's followers of it
    live: LiveReplies
    auth: Authenticator
    metrics: GatewayMetrics
    relay: Relay


@asynccontextmanager
async def open_resources(config: GatewayConfig, metrics: GatewayMetrics, relay: Relay) -> AsyncIterator[Resources]:
    auth = Authenticator(
        config.jwt_secret,
        issuer=config.jwt_issuer,
        audience=config.jwt_audience,
        allowed_origins=config.allowed_origins,
    )
    if auth.development:
        log.warning("GATEWAY_JWT_SECRET is unset: development mode, every request is the user %r", DEV_USER)
    elif config.short_secret:
        log.warning("GATEWAY_JWT_SECRET is shorter than %d bytes, too short for HS256", MIN_SECRET_BYTES)
    async with AsyncExitStack() as stack:
        url = stack.enter_context(postgres_url(config.database_url))
        upstream = await stack.enter_async_context(
            open_upstream(
                config.genservice_target,
                config.genservice_tls_ca,
                config.genservice_timeout_seconds,
                config.genservice_token,
                config.max_pending_starts,
            )
        )
        pool = await stack.enter_async_context(open_pool(url, config.name, config.pool_size))
        hub = await stack.enter_async_context(ListenerHub(url, config.listener_name))
        if not hub.connected:
            log.warning("the LISTEN connection is not up yet; streams will catch up when it is")
        for collector in (HubCollector(hub), PoolCollector(pool)):
            metrics.registry.register(collector)
            stack.callback(metrics.registry.unregister, collector)
        live = LiveReplies(OwnerStreams(upstream.watch_replies), metrics.owner_streams)
        stack.push_async_callback(live.close)
        log.info("gateway resources open: genservice at %s, pool %r", config.genservice_target, config.name)
        yield Resources(
            config=config,
            upstream=upstream,
            pool=pool,
            reads=SharedReads(pool),
            hub=hub,
            live=live,
            auth=auth,
            metrics=metrics,
            relay=relay,
        )


def request_resources(request: Request) -> Resources:
    """What the lifespan opened, as a handler reaches it."""
    return cast(Resources, request.state.resources)
