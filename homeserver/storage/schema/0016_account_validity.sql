-- Account validity (Synapse's account_validity): when each account expires, and the
-- renewal token last e-mailed to its owner.
CREATE TABLE account_validity (
    user_id TEXT PRIMARY KEY,
    expiration_ts_ms BIGINT NOT NULL,
    -- 1 once the renewal e-mail for the current period went out
    email_sent SMALLINT NOT NULL DEFAULT 0,
    renewal_token TEXT,
    token_used_ts_ms BIGINT
);
CREATE INDEX account_validity_expiry ON account_validity (expiration_ts_ms);
CREATE UNIQUE INDEX account_validity_token ON account_validity (renewal_token);
