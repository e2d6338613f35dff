"""Records to protobuf messages."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from genservice.store import ConversationRecord, MessageRecord
from genservice.v1 import genservice_pb2 as pb

STATUS_TO_PB = {
    "streaming": pb.MESSAGE_STATUS_STREAMING,
    "complete": pb.MESSAGE_STATUS_COMPLETE,
    "error": pb.MESSAGE_STATUS_ERROR,
    "cancelled": pb.MESSAGE_STATUS_CANCELLED,
}
ROLE_TO_PB = {"user": pb.ROLE_USER, "assistant": pb.ROLE_ASSISTANT}


def timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def message_to_pb(record: MessageRecord) -> pb.Message:
    message = pb.Message(
        id=record.id,
        conversation_id=record.conversation_id,
        role=ROLE_TO_PB[record.role],
        content=record.content,
        status=STATUS_TO_PB[record.status],
        error=record.error,
        model=record.model,
        finish_reason=record.finish_reason,
        created_at=timestamp(record.created_at),
        updated_at=timestamp(record.updated_at),
    )
    if record.total_tokens is not None:
        message.usage.CopyFrom(
            pb.Usage(
                prompt_tokens=record.prompt_tokens or 0,
                completion_tokens=record.completion_tokens or 0,
                total_tokens=record.total_tokens,
            )
        )
    return message


def conversation_to_pb(record: ConversationRecord) -> pb.Conversation:
    return pb.Conversation(
        id=record.id,
        title=record.title,
        created_at=timestamp(record.created_at),
        updated_at=timestamp(record.updated_at),
    )
