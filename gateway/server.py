"""The `gateway` program: uvicorn serving the app, with a two-stage shutdown.

A first SIGTERM/SIGINT stops accepting connections and marks health as draining; open streams
get SHUTDOWN_GRACE_SECONDS to end by themselves, then each is ended cleanly (a whole last event,
then the end of the body), so its client resumes on another gateway from its last id. A second
signal exits at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import math
import os
import signal
import socket
from collections.abc import AsyncIterator, Generator, Sequence
from dataclasses import dataclass

import uvicorn
import uvloop

from gateway.app import Gateway, create_gateway
from gateway.config import GatewayConfig
from gateway.protocol import guarded_protocol
from genservice.replies.settings import ConfigError

log = logging.getLogger(__name__)

# after the grace period, the time ended streams get to flush before uvicorn cancels what is left
FLUSH_SECONDS = 2.0
START_TIMEOUT_SECONDS = 30.0
# on a forced exit, how long the resources get to close
FORCED_CLOSE_SECONDS = 1.0
SIGNALS = (signal.SIGINT, signal.SIGTERM)

ENVIRONMENT_HELP = """\
environment:
  GATEWAY_ADDR                 host:port to listen on (127.0.0.1:8080)
  GENSERVICE_TARGET            where genservice listens (127.0.0.1:50051); several host:port, comma-
                               separated, spread the calls round-robin over them
  DATABASE_URL                 Postgres (unset: the embedded Postgres in .data/)
  GATEWAY_JWT_SECRET           HS256 secret; unset: development mode, one user `dev` (only blanks: refused)
  GATEWAY_JWT_ISSUER, GATEWAY_JWT_AUDIENCE   when set, a token's iss / aud must match
  GATEWAY_ALLOWED_ORIGINS      origins (comma-separated) besides the gateway's own that may POST with the cookie
  GENSERVICE_TOKEN             sent to genservice on every call (unset: none sent)
  GENSERVICE_TLS_CA            PEM CA of genservice's certificate: the channel uses TLS (unset: plaintext)
  MAX_BODY_BYTES               largest request body (262144)
  GATEWAY_HEADER_TIMEOUT_SECONDS   a request's headers must arrive within this (10)
  GATEWAY_BODY_TIMEOUT_SECONDS     and its JSON body within this (30)
  GATEWAY_MAX_CONNECTIONS      open connections at most, streams included; past it 503 (10000)
  GATEWAY_MAX_PENDING_STARTS   replies sent to genservice and not yet started; past it a start is 503 (64; 0: none)
  MAX_CONTENT_CHARS            longest user message; a longer one is 413 (32000)
  PING_SECONDS                 `: ping` comment interval on idle streams (15)
  SHUTDOWN_GRACE_SECONDS       time open streams get to end on shutdown (10)
  GENSERVICE_TIMEOUT_SECONDS   deadline of a call to genservice and of a stream's first event (10)
  HEALTH_TIMEOUT_SECONDS       bound of each health check (2)
  OWNER_START_SECONDS          a live reply's owner that does not answer a follower's watch within this is
                               read around: Postgres meanwhile, the owner once it answers (0.5)
  GATEWAY_POOL_SIZE            Postgres connections at most (10)
  GATEWAY_NAME                 Postgres application_name; the listener is <name>-listener (gateway)
"""


class GatewayServer(uvicorn.Server):
    """uvicorn's server, shut down in two stages; signals are handled only when asked to (not in tests)."""

    def __init__(self, config: uvicorn.Config, gateway: Gateway, grace: float, handle_signals: bool) -> None:
        super().__init__(config)
        self._gateway = gateway
        self._grace = grace
        self._handle_signals = handle_signals
        self._grace_timer: asyncio.TimerHandle | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if not self._handle_signals:
            yield
            return
        loop = asyncio.get_running_loop()
        for sig in SIGNALS:
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            yield
        finally:
            for sig in SIGNALS:
                loop.remove_signal_handler(sig)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await super().shutdown(sockets)
        if self.force_exit:
            # uvicorn skips the lifespan's end on a forced exit; the resources still close, in order, briefly
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FORCED_CLOSE_SECONDS):
                    await self.lifespan.shutdown()

    def _on_signal(self, sig: signal.Signals) -> None:
        if self.should_exit:
            log.warning("second signal (%s): exiting now", sig.name)
            self.exit_now()
        else:
            log.info("%s: draining; open streams get %.1fs (signal again to exit now)", sig.name, self._grace)
            self.begin_shutdown()

    def begin_shutdown(self) -> None:
        """Stop accepting, let open streams run for the grace period, then end them cleanly."""
        if self.should_exit:
            return
        self.should_exit = True
        self._gateway.relay.begin_drain()
        self._grace_timer = asyncio.get_running_loop().call_later(self._grace, self._end_streams)

    def exit_now(self) -> None:
        self.should_exit = self.force_exit = True
        self._end_streams()

    def _end_streams(self) -> None:
        log.info("ending the open streams; their clients resume elsewhere")
        self._gateway.relay.close_all()

    def cancel_timer(self) -> None:
        if self._grace_timer is not None:
            self._grace_timer.cancel()


@dataclass(frozen=True)
class RunningGateway:
    config: GatewayConfig
    server: GatewayServer
    gateway: Gateway
    host: str
    port: int
    task: asyncio.Task[None]

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def bind(config: GatewayConfig) -> socket.socket:
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # several gateway processes may share the address; the kernel spreads connections among them
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((config.host, config.port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


@contextlib.asynccontextmanager
async def running_gateway(config: GatewayConfig, *, handle_signals: bool = False) -> AsyncIterator[RunningGateway]:
    """A started gateway on config.addr (port 0: a free port); on exit it shuts down in order."""
    gateway = create_gateway(config)
    sock = bind(config)
    server = GatewayServer(
        uvicorn.Config(
            gateway.app,
            lifespan="on",
            log_config=None,
            http=guarded_protocol(config.header_timeout_seconds, config.max_connections),
            access_log=False,
            timeout_graceful_shutdown=math.ceil(config.shutdown_grace_seconds + FLUSH_SECONDS),
        ),
        gateway,
        config.shutdown_grace_seconds,
        handle_signals,
    )
    task = asyncio.create_task(server.serve(sockets=[sock]), name="gateway-server")
    try:
        async with asyncio.timeout(START_TIMEOUT_SECONDS):
            while not server.started:
                if task.done():
                    raise RuntimeError("the gateway did not start") from task.exception()
                await asyncio.sleep(0.01)
        host, port = sock.getsockname()[:2]
        log.info("gateway listening on %s:%d", host, port)
        yield RunningGateway(config=config, server=server, gateway=gateway, host=host, port=port, task=task)
    finally:
        server.begin_shutdown()
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            server.exit_now()
            await task
            raise
        finally:
            server.cancel_timer()
            sock.close()


async def serve(config: GatewayConfig) -> None:
    async with running_gateway(config, handle_signals=True) as running:
        # what startup made lives as long as the process: full collections no longer walk it
        gc.freeze()
        await running.task


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="The HTTP gateway: browsers' door to genservice, with replies as Server-Sent Events.",
        epilog=ENVIRONMENT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = GatewayConfig.from_env(os.environ)
    except ConfigError as err:
        parser.exit(2, f"gateway: {err}\n")
    # libuv's event loop: about a twentieth less CPU per token through the product (make bench)
    uvloop.run(serve(config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
