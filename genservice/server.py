"""genservice's entry point: builds every resource once, serves gRPC, and shuts down in two stages."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import grpc
import uvloop
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from psycopg.conninfo import conninfo_to_dict

from genservice.auth import TokenCheck
from genservice.batcher import SaveBatcher
from genservice.config import GenServiceConfig
from genservice.generations import Generations
from genservice.health import ServiceHealth
from genservice.loop_lag import watching_loop_lag
from genservice.model import make_client
from genservice.replies.background import background
from genservice.replies.database import open_pool, postgres_url
from genservice.replies.listener import ListenerHub
from genservice.replies.migrations import migrate
from genservice.replies.settings import ConfigError
from genservice.replies.shared_reads import SharedReads
from genservice.service import GenerationService
from genservice.sweeper import sweep_forever
from genservice.v1 import genservice_pb2 as pb
from genservice.v1 import genservice_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GenerationService"].full_name
RPC_GRACE_SECONDS = 2.0
# the save batcher's one connection, and room for ends written at the same moment
WRITER_CONNECTIONS = 4
SERVER_OPTIONS = [
    # the gateway pings an idle channel every 20 s (keepalive), so that a dead peer is noticed
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    # a reply may be MAX_REPLY_CHARS (2,000,000) characters of up to 4 bytes, in one message
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
]
ENVIRONMENT_HELP = """environment:
  GENSERVICE_ADDR              host:port to listen on (127.0.0.1:50051)
  GENSERVICE_ADVERTISE_ADDR    host:port gateways dial for this process's live replies (the bound address)
  GENSERVICE_TOKEN             every GenerationService call must carry `authorization: Bearer <token>`
                               (unset: no check, and only a loopback GENSERVICE_ADDR is accepted)
  GENSERVICE_TLS_CERT, GENSERVICE_TLS_KEY   PEM certificate and key: serve TLS (unset: plaintext)
  DATABASE_URL                 Postgres (unset: the embedded Postgres in .data/)
  OPENAI_BASE_URL              any OpenAI-compatible endpoint (unset: demo-llm at DEMO_LLM_ADDR, 127.0.0.1:8181)
  OPENAI_API_KEY               its key (never logged)
  OPENAI_MODEL                 model when a request names none (demo)
  SAVE_EVERY_CHARS             a save at least every this many characters (200)
  SAVE_MAX_DELAY_MS            and at most this long after new text (50); 20 save commits a second at most
  BUSY_REPLIES                 past this many replies running here, the process is busy (4)
  BUSY_DELTA_INTERVAL_MS       a busy process sends new text to callers on one tick this often, merged (40; 0: never)
  BUSY_SAVE_DELAY_MS           a busy process's SAVE_MAX_DELAY_MS (250)
  LEASE_SECONDS                a generation's lease; a dead owner's message ends ERROR after about 4/3 of it (15)
  SHUTDOWN_GRACE_SECONDS       time running replies get to finish on SIGTERM (10)
  MODEL_IDLE_TIMEOUT_SECONDS   longest silence from the model (60)
  MODEL_MAX_RETRIES            retries before the first token (2)
  MAX_REPLY_CHARS              longest reply kept (2000000)
  MAX_CONTENT_CHARS            longest user message accepted (32000)
  MAX_ACTIVE_REPLIES_PER_USER  replies one user may have STREAMING at once; past it RESOURCE_EXHAUSTED (8; 0: no limit)
  MAX_ACTIVE_REPLIES           replies this process runs at once; past it UNAVAILABLE (500)
  MAX_LOOP_LAG_MS              while its work runs this late on average, a start is UNAVAILABLE (250; 0: never)
  ALLOWED_MODELS               models a request may name, comma-separated, `*` for any (OPENAI_MODEL alone)
  GENSERVICE_POOL_SIZE         Postgres connections at most (20)

The first SIGTERM/SIGINT drains (NOT_SERVING, new replies refused, running ones finish or end ERROR);
a second exits at once."""


@dataclass(frozen=True)
class RunningService:
    target: str
    # the lease owner name of this process
    owner: str


def session_options(url: str, idle_in_transaction_timeout: float) -> dict[str, str]:
    """The libpq `options` of genservice's pooled connections: the URL's own (else PGOPTIONS, as libpq would take
    them), and `idle_in_transaction_session_timeout`."""
    own = conninfo_to_dict(url).get("options") or os.environ.get("PGOPTIONS", "")
    timeout_ms = max(1, round(idle_in_transaction_timeout * 1000))
    return {"options": f"{own} -c idle_in_transaction_session_timeout={timeout_ms}".strip()}


@contextlib.asynccontextmanager
async def running_service(config: GenServiceConfig) -> AsyncIterator[RunningService]:
    """The whole service, serving until the block ends; then a graceful drain."""
    owner = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    with postgres_url(config.database_url) as url:
        async with AsyncExitStack() as stack:
            options = session_options(url, config.idle_in_transaction_timeout)
            pool = await stack.enter_async_context(open_pool(url, "genservice", config.pool_size, extra_kwargs=options))
            # saves, lease renewals and ends never wait behind request traffic: connections of their own
            writer = await stack.enter_async_context(
                open_pool(url, "genservice-writer", WRITER_CONNECTIONS, extra_kwargs=options)
            )
            await migrate(pool)
            hub = await stack.enter_async_context(ListenerHub(url, "genservice-listener"))
            client = make_client(
                config.openai_base_url, config.openai_api_key, config.model_max_retries, config.model_idle_timeout
            )
            stack.push_async_callback(client.close)
            batcher = SaveBatcher(
                writer,
                owner,
                save_every_chars=config.save_every_chars,
                max_delay=config.save_max_delay,
                busy_replies=config.busy_replies,
                busy_max_delay=config.busy_save_delay,
                lease_seconds=config.lease_seconds,
            )
            saver = await stack.enter_async_context(background("save-batcher", batcher.run))
            interceptors = [] if config.token is None else [TokenCheck(config.token, SERVICE_NAME)]
            server = grpc.aio.server(interceptors=interceptors, options=SERVER_OPTIONS)
            if config.tls_cert is not None and config.tls_key is not None:
                pair = (Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())
                port = server.add_secure_port(config.addr, grpc.ssl_server_credentials([pair]))
            else:
                port = server.add_insecure_port(config.addr)
            host = config.addr.rpartition(":")[0]
            owner_addr = config.advertise_addr or f"{host}:{port}"
            lag = stack.enter_context(watching_loop_lag())
            generations = Generations(config, pool, writer, hub, client, batcher, owner, owner_addr, lag)
            sweeper = await stack.enter_async_context(
                background(
                    "sweeper",
                    lambda: sweep_forever(
                        pool, owner, generations.running_ids, config.sweep_interval, config.lease_seconds
                    ),
                )
            )

            pb_grpc.add_GenerationServiceServicer_to_server(
                GenerationService(config, SharedReads(pool), hub, generations), server
            )
            health_servicer = health.aio.HealthServicer()
            health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
            reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
            await server.start()
            service_health = ServiceHealth(
                health_servicer,
                ("", SERVICE_NAME),
                {
                    "save batcher": lambda: saver.healthy,
                    "sweeper": lambda: sweeper.healthy,
                    "listener": lambda: hub.healthy,
                },
            )
            await stack.enter_async_context(background("health", service_health.watch))
            log.info("genservice serving on %s:%d (owner %s, live text at %s)", host, port, owner, owner_addr)
            if config.token is None:
                log.warning("GENSERVICE_TOKEN is unset: any local process may call genservice as any user")
            try:
                yield RunningService(f"{host}:{port}", owner)
            finally:
                log.info("shutting down: NOT_SERVING, refusing new replies, draining generations")
                await health_servicer.enter_graceful_shutdown()
                await generations.drain(config.shutdown_grace_seconds)
                await server.stop(RPC_GRACE_SECONDS)


async def serve(config: GenServiceConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            log.warning("second signal: exiting at once")
            os._exit(1)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal)
    async with running_service(config):
        # what startup made lives as long as the process: full collections no longer walk it
        gc.freeze()
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="genservice",
        description="gRPC generation service: owns every LLM call and saves each reply to Postgres as it is written.",
        epilog=ENVIRONMENT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = GenServiceConfig.from_env(os.environ)
    except ConfigError as exc:
        sys.exit(f"genservice: {exc}")
    # libuv's event loop: about a twentieth less CPU per token through the product (make bench)
    uvloop.run(serve(config))


if __name__ == "__main__":
    main()
