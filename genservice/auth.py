"""Who may call GenerationService: a caller that sends `authorization: Bearer <GENSERVICE_TOKEN>`.

`user_id` in a request is trusted only from such a caller. Health and reflection stay open.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from genservice.rpc_errors import Context

REFUSED = "this service needs authorization: Bearer <GENSERVICE_TOKEN> metadata"


class TokenCheck(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc.aio ships no stubs
    def __init__(self, token: str, service: str) -> None:
        self._expected = f"Bearer {token}".encode()
        self._prefix = f"/{service}/"

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(self._prefix):
            return handler
        if self._authorized(handler_call_details.invocation_metadata or ()):
            return handler
        return _refusing(handler)

    def _authorized(self, metadata: Any) -> bool:
        for key, value in metadata:
            if key == "authorization":
                given = value if isinstance(value, bytes) else str(value).encode()
                return hmac.compare_digest(given, self._expected)
        return False


async def _refuse_unary(request: Any, context: Context) -> Any:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, REFUSED)


async def _refuse_stream(request: Any, context: Context) -> AsyncIterator[Any]:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, REFUSED)
    yield


def _refusing(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that answers UNAUTHENTICATED."""
    if handler.request_streaming:
        make = grpc.stream_stream_rpc_method_handler
    elif handler.response_streaming:
        make = grpc.unary_stream_rpc_method_handler
    else:
        make = grpc.unary_unary_rpc_method_handler
    return make(
        _refuse_stream if handler.response_streaming else _refuse_unary,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
