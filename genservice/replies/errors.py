"""The product's own errors: each carries the gRPC canonical code it maps to at the boundary."""

from __future__ import annotations

import grpc

# the trailing metadata key of a retry hint, in whole seconds
RETRY_AFTER_KEY = "retry-after"


class ServiceError(Exception):
    """A failure the caller can act on; its message is safe to show to a user."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        # seconds after which trying again may succeed; sent as trailing metadata
        self.retry_after = retry_after


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


def message_not_found(message_id: str) -> NotFound:
    return NotFound(f"message {message_id} not found")


def conversation_not_found(conversation_id: str) -> NotFound:
    return NotFound(f"conversation {conversation_id} not found")
