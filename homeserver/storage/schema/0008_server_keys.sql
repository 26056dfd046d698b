-- Other servers' signing keys, as fetched from them or from a notary (or learnt otherwise).
-- valid_until_ts is already capped at fetched_ts + 7 days; for an old key it is expired_ts.
CREATE TABLE server_keys (
    server_name TEXT NOT NULL,
    key_id TEXT NOT NULL,
    verify_key TEXT NOT NULL,
    valid_until_ts BIGINT NOT NULL,
    fetched_ts BIGINT NOT NULL,
    source TEXT NOT NULL,
    PRIMARY KEY (server_name, key_id)
);

-- The key responses as received (origin-signed JSON), per server and per server we got
-- them from, so that we can serve them as a notary (/_matrix/key/v2/query).
-- valid_until_ts here is the response's own, uncapped.
CREATE TABLE server_key_responses (
    server_name TEXT NOT NULL,
    source TEXT NOT NULL,
    valid_until_ts BIGINT NOT NULL,
    fetched_ts BIGINT NOT NULL,
    key_json TEXT NOT NULL,
    PRIMARY KEY (server_name, source)
);
