-- End-to-end encryption across servers.

-- Which device a device-list change is about (NULL: the user's cross-signing keys).  The
-- m.device_list_update EDUs we send carry one change each, chained by these stream IDs.
ALTER TABLE device_list_changes ADD COLUMN device_id TEXT;

-- Our copy of a remote user's device list, kept while we share a room with the user and
-- updated by their server's m.device_list_update EDUs.  stream_id is the remote server's
-- position our copy reflects (NULL: unknown); stale copies are never served.
-- Remote users' cross-signing keys live in e2e_cross_signing_keys, beside local ones.
CREATE TABLE e2e_remote_device_lists (
    user_id TEXT PRIMARY KEY,
    stream_id BIGINT,
    stale SMALLINT NOT NULL DEFAULT 0,
    updated_ts BIGINT NOT NULL
);

CREATE TABLE e2e_remote_devices (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    key_json TEXT,
    display_name TEXT,
    PRIMARY KEY (user_id, device_id)
);
