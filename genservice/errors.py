"""The service's own errors: each names the gRPC canonical code it maps to at the boundary."""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    """A failure the caller can act on; its message is safe to show to a user."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    http_status: int = 500


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 400


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND
    http_status = 404


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    http_status = 409


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE
    http_status = 503


def message_not_found(message_id: str) -> NotFound:
    return NotFound(f"message {message_id} not found")


def conversation_not_found(conversation_id: str) -> NotFound:
    return NotFound(f"conversation {conversation_id} not found")
