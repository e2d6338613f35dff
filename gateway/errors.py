"""Every failure the gateway answers, mapped in one place to an HTTP status and a JSON error body.

A client sees `{"error": {"code": ..., "message": ...}}`; the message of a 5xx never carries
internal detail (addresses, SQL, tracebacks), which is logged here instead.
"""

from __future__ import annotations

import logging

import grpc
import psycopg
from starlette.responses import JSONResponse

from genservice.replies.errors import ServiceError

log = logging.getLogger(__name__)

# gRPC canonical codes -> HTTP status; anything else is a 500
RPC_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 503,
}
GENERIC_MESSAGES = {
    500: "internal error",
    503: "the service is unavailable; try again",
}


class ApiError(Exception):
    """A failure with the HTTP status and the message a client gets; the message is safe to show."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers

    def response(self) -> JSONResponse:
        return JSONResponse(
            {"error": {"code": self.code, "message": self.message}}, status_code=self.status, headers=self.headers
        )


def bad_request(message: str) -> ApiError:
    return ApiError(400, "invalid_argument", message)


def unprocessable(message: str) -> ApiError:
    return ApiError(422, "invalid_argument", message)


def unauthenticated(message: str) -> ApiError:
    return ApiError(401, "unauthenticated", message, headers={"WWW-Authenticate": 'Bearer realm="gateway"'})


# seconds a refused client (429, 503) is told to wait before it tries again
RETRY_AFTER_SECONDS = 2


def unavailable(what: str) -> ApiError:
    return ApiError(
        503, "unavailable", f"{what} is unavailable; try again", headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
    )


def from_rpc_error(err: grpc.aio.AioRpcError) -> ApiError:
    return from_status(err.code(), err.details() or "")


def from_status(code: grpc.StatusCode, details: str) -> ApiError:
    """A gRPC status as a client sees it: the table's HTTP status, and no internal detail on a 5xx."""
    status = RPC_STATUS.get(code, 500)
    name = code.name.lower() if isinstance(code, grpc.StatusCode) else "internal"
    if status >= 500:
        log.warning("genservice answered %s: %s", name, details)
        if status == 503:
            return unavailable("genservice")
        return ApiError(500, "internal", GENERIC_MESSAGES[500])
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status == 429 else None
    return ApiError(status, name, details or name, headers=headers)


def from_exception(exc: BaseException) -> ApiError:
    """Any failure as a client sees it; unknown ones are logged with their traceback."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, grpc.aio.AioRpcError):
        return from_rpc_error(exc)
    if isinstance(exc, ServiceError):
        return from_status(exc.code, str(exc))
    if isinstance(exc, psycopg.OperationalError):
        log.warning("Postgres is unavailable: %s: %s", type(exc).__name__, exc)
        return unavailable("the database")
    if isinstance(exc, TimeoutError):
        log.warning("timed out waiting for a backend")
        return unavailable("a backend")
    log.error("unexpected error", exc_info=exc)
    return ApiError(500, "internal", GENERIC_MESSAGES[500])
