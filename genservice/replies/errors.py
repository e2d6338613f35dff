"""The product's own errors: each carries the gRPC canonical code it maps to at the boundary."""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    """A failure the caller can act on; its message is safe to show to a user."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


def message_not_found(message_id: str) -> NotFound:
    return NotFound(f"message {message_id} not found")


def conversation_not_found(conversation_id: str) -> NotFound:
    return NotFound(f"conversation {conversation_id} not found")
