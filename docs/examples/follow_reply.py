"""Start a reply, or follow one by id, through genservice's gRPC API and print its text as it streams."""

import os
import sys

import grpc

from genservice.v1 import genservice_pb2 as pb
from genservice.v1 import genservice_pb2_grpc as pb_grpc

target, user = os.environ.get("GENSERVICE_TARGET", "127.0.0.1:50051"), "dev"
auth = [("authorization", f"Bearer {os.environ['GENSERVICE_TOKEN']}")] if "GENSERVICE_TOKEN" in os.environ else []
with grpc.insecure_channel(target) as channel:
    stub = pb_grpc.GenerationServiceStub(channel)
    if sys.argv[1] == "--follow":  # follow_reply.py --follow MESSAGE_ID: live or ended, on any replica
        events = stub.WatchReply(pb.WatchReplyRequest(user_id=user, message_id=sys.argv[2]), metadata=auth)
    else:  # follow_reply.py "a question": a new conversation
        events = stub.StreamReply(pb.StreamReplyRequest(user_id=user, content=sys.argv[1]), metadata=auth)
    for event in events:
        if event.HasField("started"):
            sys.stderr.write(f"message {event.started.message_id}\n")
        elif event.HasField("delta"):
            sys.stdout.write(event.delta.text)
            sys.stdout.flush()
        else:
            sys.stderr.write(f"\n{pb.MessageStatus.Name(event.finished.message.status)}\n")
