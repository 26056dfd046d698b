-- Accounts, devices, access and refresh tokens, user-interactive auth sessions,
-- registration tokens.  Flags are SMALLINT 0/1 so the SQL is the same on both engines.

CREATE TABLE users (
    user_id TEXT PRIMARY KEY,
    password_hash TEXT,
    created_ts BIGINT NOT NULL,
    is_admin SMALLINT NOT NULL DEFAULT 0,
    is_guest SMALLINT NOT NULL DEFAULT 0,
    deactivated SMALLINT NOT NULL DEFAULT 0,
    user_type TEXT,
    appservice_id TEXT
);

CREATE TABLE devices (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    display_name TEXT,
    last_seen_ts BIGINT,
    last_seen_ip TEXT,
    last_seen_user_agent TEXT,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

-- Tokens are stored as SHA-256 hex digests: a database leak yields no usable token.
CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    expiry_ts BIGINT,
    ultimate_session_expiry_ts BIGINT,
    -- set once the token was exchanged; the replacement stays usable
    next_token_hash TEXT
);
CREATE INDEX refresh_tokens_device ON refresh_tokens (user_id, device_id);

CREATE TABLE access_tokens (
    token_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    device_id TEXT,
    created_ts BIGINT NOT NULL,
    valid_until_ts BIGINT,
    refresh_token_hash TEXT,
    -- for admin "login as" tokens: the admin who obtained it
    puppets_user_id TEXT
);
CREATE INDEX access_tokens_device ON access_tokens (user_id, device_id);

CREATE TABLE ui_auth_sessions (
    session_id TEXT PRIMARY KEY,
    created_ts BIGINT NOT NULL,
    uri TEXT NOT NULL,
    method TEXT NOT NULL,
    description TEXT NOT NULL,
    -- JSON object: what the server needs to remember (e.g. registration parameters)
    serverdict TEXT NOT NULL,
    user_id TEXT
);

CREATE TABLE ui_auth_session_stages (
    session_id TEXT NOT NULL,
    stage_type TEXT NOT NULL,
    result TEXT NOT NULL,
    PRIMARY KEY (session_id, stage_type)
);

CREATE TABLE registration_tokens (
    token TEXT PRIMARY KEY,
    uses_allowed INTEGER,
    pending INTEGER NOT NULL DEFAULT 0,
    completed INTEGER NOT NULL DEFAULT 0,
    expiry_time BIGINT
);
