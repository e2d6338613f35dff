CREATE TABLE conversations (
    id uuid PRIMARY KEY,
    user_id text NOT NULL,
    title text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX conversations_by_user_recent ON conversations (user_id, updated_at DESC, id DESC);

CREATE TABLE messages (
    id uuid PRIMARY KEY,
    seq bigint GENERATED ALWAYS AS IDENTITY,
    conversation_id uuid NOT NULL REFERENCES conversations (id),
    user_id text NOT NULL,
    role text NOT NULL CHECK (role IN ('user', 'assistant')),
    -- whole text once the message has ended; while streaming the text lives in message_saves
    content text NOT NULL DEFAULT '',
    saved_length integer NOT NULL DEFAULT 0,
    status text NOT NULL CHECK (status IN ('streaming', 'complete', 'error', 'cancelled')),
    error text NOT NULL DEFAULT '',
    model text NOT NULL DEFAULT '',
    finish_reason text NOT NULL DEFAULT '',
    prompt_tokens integer,
    completion_tokens integer,
    total_tokens integer,
    -- the generation's lease: its owner renews it while it runs; every write is fenced on it
    lease_owner text,
    lease_expires_at timestamptz,
    cancel_requested boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX messages_by_conversation ON messages (conversation_id, seq);
CREATE INDEX messages_streaming ON messages (lease_expires_at) WHERE status = 'streaming';
CREATE UNIQUE INDEX one_streaming_reply_per_conversation ON messages (conversation_id) WHERE status = 'streaming';

-- one appended row per save: the cost of a save does not grow with the reply's length
CREATE TABLE message_saves (
    message_id uuid NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    start_offset integer NOT NULL,
    text text NOT NULL,
    PRIMARY KEY (message_id, start_offset)
);

CREATE TABLE request_keys (
    user_id text NOT NULL,
    request_id text NOT NULL,
    message_id uuid NOT NULL REFERENCES messages (id),
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (user_id, request_id)
);
