-- the per-user limit counts a user's streaming replies at every start
CREATE INDEX messages_streaming_by_user ON messages (user_id) WHERE status = 'streaming';

-- The saved text of every message for other programs, in one plain query:
--   SELECT content FROM message_text WHERE id = '...';
-- while streaming: what has been saved so far (it grows as saves commit); once ended: the whole text.
CREATE VIEW message_text AS
SELECT
    m.id,
    m.conversation_id,
    m.role,
    m.status,
    CASE
        WHEN m.status = 'streaming' THEN (
            SELECT coalesce(string_agg(s.text, '' ORDER BY s.start_offset), '')
            FROM message_saves s
            WHERE s.message_id = m.id
        )
        ELSE m.content
    END AS content
FROM messages m;
