"""Errors mapped at the gRPC boundary: one decorator gives every RPC the canonical code and a safe message."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, NoReturn, TypeAlias, TypeVar, overload

import grpc
import psycopg

from genservice.replies.database import DATABASE_ERRORS
from genservice.replies.errors import RETRY_AFTER_KEY, FailedPrecondition, ServiceError, Unavailable

log = logging.getLogger(__name__)

Servicer = TypeVar("Servicer")
Request = TypeVar("Request")
Response = TypeVar("Response")
DATABASE_RETRY_SECONDS = 2
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


def service_error(exc: Exception) -> ServiceError:
    """Any failure as the canonical code and message a caller sees; no traceback ever reaches one."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, psycopg.errors.UniqueViolation):
        return FailedPrecondition("a reply is already streaming in this conversation")
    if isinstance(exc, DATABASE_ERRORS):
        return Unavailable("the database is unavailable; try again shortly", retry_after=DATABASE_RETRY_SECONDS)
    log.error("unexpected error in an RPC", exc_info=exc)
    return ServiceError("internal error")


async def _abort(context: Context, exc: Exception) -> NoReturn:
    error = service_error(exc)
    if error.retry_after is not None:
        context.set_trailing_metadata(((RETRY_AFTER_KEY, str(error.retry_after)),))
    await context.abort(error.code, str(error))
    raise AssertionError("abort raises")


@overload
def rpc(
    method: Callable[[Servicer, Request, Context], AsyncIterator[Response]],
) -> Callable[[Servicer, Request, Context], AsyncIterator[Response]]: ...


@overload
def rpc(
    method: Callable[[Servicer, Request, Context], Coroutine[Any, Any, Response]],
) -> Callable[[Servicer, Request, Context], Coroutine[Any, Any, Response]]: ...


def rpc(method: Callable[..., Any]) -> Callable[..., Any]:
    """An RPC method whose failures end the call with their canonical code, unary or server-streaming."""
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def streaming(servicer: Any, request: Any, context: Context) -> AsyncIterator[Any]:
            try:
                async for event in method(servicer, request, context):
                    yield event
            except Exception as exc:
                await _abort(context, exc)

        return streaming

    @functools.wraps(method)
    async def unary(servicer: Any, request: Any, context: Context) -> Any:
        try:
            return await method(servicer, request, context)
        except Exception as exc:
            await _abort(context, exc)

    return unary
