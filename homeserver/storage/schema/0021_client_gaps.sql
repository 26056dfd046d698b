-- OpenID tokens handed to clients for third parties (widgets, Element Call) to check who
-- they are through GET /_matrix/federation/v1/openid/userinfo.  Stored as SHA-256 digests.
CREATE TABLE openid_tokens (
    token_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    expires_ts BIGINT NOT NULL
);
CREATE INDEX openid_tokens_expiry ON openid_tokens (expires_ts);

-- Reports of events and rooms by users, for the server's administrators
-- (Synapse's admin API /_synapse/admin/v1/event_reports).
CREATE TABLE content_reports (
    id BIGINT PRIMARY KEY,
    received_ts BIGINT NOT NULL,
    room_id TEXT NOT NULL,
    -- NULL for a report of the whole room
    event_id TEXT,
    user_id TEXT NOT NULL,
    reason TEXT,
    score INTEGER
);
CREATE INDEX content_reports_room ON content_reports (room_id);
CREATE INDEX content_reports_user ON content_reports (user_id);
