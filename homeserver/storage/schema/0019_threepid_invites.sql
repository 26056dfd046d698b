-- Invites by e-mail address waiting for an account (spec: m.room.third_party_invite).
-- The room holds an m.room.third_party_invite event whose state key is the token; when an
-- account is bound to the address (or, for an address of another server, when that server
-- has the derived account) the invite becomes a real one and the row goes.
CREATE TABLE threepid_invites (
    token TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    medium TEXT NOT NULL,
    address TEXT NOT NULL,
    display_name TEXT NOT NULL,
    -- the server owning the address (ours, or a peer's: then retried over federation)
    server_name TEXT NOT NULL,
    created_ts BIGINT NOT NULL
);
CREATE INDEX threepid_invites_address ON threepid_invites (medium, address);
