"""The gateway's gRPC channels to genservice and the calls it makes on them.

One channel shares the calls over every configured genservice (round-robin); besides it, live replies
are watched on the process that runs them, through a channel of its own opened on first use,
only ever to an address of GENSERVICE_TARGET: an address read from the database is never dialled
unless it is configured. Unary calls carry a deadline; a reply stream has none (a reply may take
minutes), so its first event is bounded by the caller instead. gRPC failures become ApiErrors here.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, TypeAlias

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.errors import ApiError, from_rpc_error, retry_headers
from genservice.replies.settings import ConfigError
from genservice.v1 import genservice_pb2 as pb
from genservice.v1 import genservice_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

WatchRepliesCall: TypeAlias = grpc.aio.StreamStreamCall[pb.WatchRepliesRequest, pb.WatchRepliesResponse]

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
START_RETRY_SECONDS = 2
# a genservice that comes back is found again within a couple of seconds
CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    # a genservice that vanished without closing the connection (a partition) is noticed in about 30 s
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # a reply may be MAX_REPLY_CHARS (2,000,000) characters of up to 4 bytes, in one message
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]


def bearer_metadata(token: str) -> tuple[tuple[str, str]]:
    """What genservice checks on every call when it runs with GENSERVICE_TOKEN."""
    return (("authorization", f"Bearer {token}"),)


class Upstream:
    def __init__(
        self,
        channel: grpc.aio.Channel,
        timeout: float,
        token: str | None,
        addresses: Sequence[str],
        dial: Callable[[str], grpc.aio.Channel],
        max_pending_starts: int = 0,
    ) -> None:
        self._stub = pb_grpc.GenerationServiceStub(channel)
        self._health = health_pb2_grpc.HealthStub(channel)
        self._timeout = timeout
        self._metadata = bearer_metadata(token) if token is not None else ()
        self._addresses = frozenset(addresses)
        self._dial = dial
        # one address alone is the round-robin channel's own
        self._owners = {addresses[0]: self._stub} if len(addresses) == 1 else {}
        self._max_pending_starts = max_pending_starts
        self._pending_starts = 0

    def dials(self, address: str) -> bool:
        """Whether `address` is a configured genservice, which may be asked for a reply's live text."""
        return address in self._addresses

    async def stream_reply(self, request: pb.StreamReplyRequest) -> AsyncIterator[pb.ReplyEvent]:
        """The reply's events. Closing this iterator cancels the call only: the reply goes on in genservice.

        Past `max_pending_starts` calls still waiting for their first event, refused at once (503): an
        overloaded genservice takes new calls slowly, and past that many a start would only wait out its
        first-event timeout.
        """
        if self._max_pending_starts and self._pending_starts >= self._max_pending_starts:
            raise ApiError(
                503,
                "unavailable",
                f"{self._pending_starts} replies are starting on this gateway, its limit; try again shortly",
                retry_headers(START_RETRY_SECONDS),
            )
        self._pending_starts += 1
        pending = True
        try:
            async for event in self._events(self._stub.StreamReply(request, metadata=self._metadata)):
                if pending:
                    self._pending_starts -= 1
                    pending = False
                yield event
        finally:
            if pending:
                self._pending_starts -= 1

    def watch_replies(self, address: str) -> WatchRepliesCall:
        """A WatchReplies call on the genservice at `address`, which must be one that `dials`."""
        if not self.dials(address):
            raise ValueError(f"{address!r} is not a configured genservice")
        stub = self._owners.get(address)
        if stub is None:
            stub = self._owners[address] = pb_grpc.GenerationServiceStub(self._dial(address))
        call: WatchRepliesCall = stub.WatchReplies(metadata=self._metadata)
        return call

    async def _events(self, call: grpc.aio.UnaryStreamCall[Any, pb.ReplyEvent]) -> AsyncIterator[pb.ReplyEvent]:
        try:
            async for event in call:
                yield event
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err) from None
        finally:
            call.cancel()

    async def get_message(self, user_id: str, message_id: str) -> pb.Message:
        request = pb.GetMessageRequest(user_id=user_id, message_id=message_id)
        with rpc_errors():
            reply: pb.Message = await self._stub.GetMessage(request, timeout=self._timeout, metadata=self._metadata)
        return reply

    async def cancel_reply(self, user_id: str, message_id: str) -> pb.Message:
        request = pb.CancelReplyRequest(user_id=user_id, message_id=message_id)
        with rpc_errors():
            reply: pb.Message = await self._stub.CancelReply(request, timeout=self._timeout, metadata=self._metadata)
        return reply

    async def list_messages(
        self, user_id: str, conversation_id: str, page_size: int = 0, page_token: str = ""
    ) -> pb.ListMessagesResponse:
        request = pb.ListMessagesRequest(
            user_id=user_id, conversation_id=conversation_id, page_size=page_size, page_token=page_token
        )
        with rpc_errors():
            reply: pb.ListMessagesResponse = await self._stub.ListMessages(
                request, timeout=self._timeout, metadata=self._metadata
            )
        return reply

    async def list_conversations(self, user_id: str, page_size: int, page_token: str) -> pb.ListConversationsResponse:
        request = pb.ListConversationsRequest(user_id=user_id, page_size=page_size, page_token=page_token)
        with rpc_errors():
            reply: pb.ListConversationsResponse = await self._stub.ListConversations(
                request, timeout=self._timeout, metadata=self._metadata
            )
        return reply

    async def serving(self, timeout: float) -> bool:
        """Whether genservice's standard health service answers SERVING within `timeout`."""
        try:
            answer = await self._health.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.aio.AioRpcError as err:
            log.warning("genservice health check failed: %s", err.code())
            return False
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


@contextmanager
def rpc_errors() -> Iterator[None]:
    try:
        yield
    except grpc.aio.AioRpcError as err:
        raise from_rpc_error(err) from None


def target_addresses(target: str) -> list[str]:
    """GENSERVICE_TARGET's addresses: one, or several comma-separated."""
    return [part.strip() for part in target.split(",") if part.strip()]


def channel_target(target: str) -> tuple[str, list[tuple[str, int | str]]]:
    """grpc's target and options for GENSERVICE_TARGET: one address, or several (IP:port, comma-separated)
    that share the calls round-robin, one connection each."""
    addresses = target_addresses(target)
    if len(addresses) <= 1:
        return target, CHANNEL_OPTIONS
    for address in addresses:
        try:
            ipaddress.ip_address(address.rpartition(":")[0].strip("[]"))
        except ValueError:
            raise ConfigError(f"GENSERVICE_TARGET: several addresses must each be ip:port, got {address!r}") from None
    scheme = "ipv6" if addresses[0].startswith("[") else "ipv4"
    return f"{scheme}:{','.join(addresses)}", [*CHANNEL_OPTIONS, ("grpc.lb_policy_name", "round_robin")]


@asynccontextmanager
async def open_upstream(
    target: str, tls_ca: str | None, timeout: float, token: str | None, max_pending_starts: int = 0
) -> AsyncIterator[Upstream]:
    """The channels to genservice, plaintext or TLS verified against the CA in the PEM file `tls_ca`, and the
    calls on them; every channel is closed at the end."""
    credentials = None if tls_ca is None else grpc.ssl_channel_credentials(Path(tls_ca).read_bytes())
    channels: list[grpc.aio.Channel] = []

    def dial(address: str, options: list[tuple[str, int | str]] = CHANNEL_OPTIONS) -> grpc.aio.Channel:
        if credentials is None:
            channel = grpc.aio.insecure_channel(address, options=options)
        else:
            channel = grpc.aio.secure_channel(address, credentials, options=options)
        channels.append(channel)
        return channel

    try:
        yield Upstream(
            dial(*channel_target(target)), timeout, token, target_addresses(target), dial, max_pending_starts
        )
    finally:
        for channel in channels:
            await channel.close(grace=None)
