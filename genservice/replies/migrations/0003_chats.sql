-- the AI SDK transport: a user message keeps the client's id; a regenerated reply supersedes the earlier ones
ALTER TABLE messages ADD COLUMN client_id text;
ALTER TABLE messages ADD COLUMN superseded boolean NOT NULL DEFAULT false;
