-- Third-party identifiers (e-mail addresses) bound to accounts, and the validation
-- sessions that prove a user owns one (a link with a long token, or a short code).
CREATE TABLE user_threepids (
    medium TEXT NOT NULL,
    address TEXT NOT NULL,
    user_id TEXT NOT NULL,
    validated_at BIGINT NOT NULL,
    added_at BIGINT NOT NULL,
    PRIMARY KEY (medium, address)
);
CREATE INDEX user_threepids_user ON user_threepids (user_id);

CREATE TABLE threepid_validation_sessions (
    session_id TEXT PRIMARY KEY,
    medium TEXT NOT NULL,
    address TEXT NOT NULL,
    client_secret TEXT NOT NULL,
    -- what the address is validated for: "registration" or "add_threepid"
    purpose TEXT NOT NULL,
    send_attempt INTEGER NOT NULL,
    link_token TEXT NOT NULL,
    code TEXT NOT NULL,
    failed_attempts INTEGER NOT NULL DEFAULT 0,
    created_ts BIGINT NOT NULL,
    validated_at BIGINT
);
CREATE INDEX threepid_sessions_secret ON threepid_validation_sessions (client_secret, medium, address, purpose);
