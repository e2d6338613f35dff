"""A client's chat id and its conversation: a name-based UUID of user and chat id, the same in every process.

No table maps one to the other, so the first request for a chat creates its conversation without
a race, and a reader finds it without a lookup. Another user's chat id gives another conversation.
"""

from __future__ import annotations

import uuid

# any constant works; changing it would orphan every chat's conversation
CHAT_NAMESPACE = uuid.UUID("6f3b1f0e-2a47-4c1e-9d0b-5b8f3c6a7e21")


def chat_conversation_id(user_id: str, chat_id: str) -> str:
    return str(uuid.uuid5(CHAT_NAMESPACE, f"{user_id}\x00{chat_id}"))
