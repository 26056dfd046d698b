-- Rooms, events, the event graph and room state.
--
-- Room state is stored as state groups: the state after an event is a group, stored as
-- a delta from a previous group, with a full snapshot every few dozen deltas.  Events
-- that change no state share their predecessor's group, so the database grows with the
-- number of state changes, never with (state size x number of events).

CREATE TABLE rooms (
    room_id TEXT PRIMARY KEY,
    room_version TEXT NOT NULL,
    creator TEXT,
    created_ts BIGINT NOT NULL,
    -- published in this server's room directory
    is_public SMALLINT NOT NULL DEFAULT 0
);

CREATE TABLE events (
    -- our order of arrival; the position /sync tokens count in
    stream_ordering BIGINT PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    room_id TEXT NOT NULL,
    type TEXT NOT NULL,
    state_key TEXT,
    sender TEXT NOT NULL,
    depth BIGINT NOT NULL,
    origin_server_ts BIGINT NOT NULL,
    received_ts BIGINT NOT NULL,
    -- the event exactly as received or built (its hashes and signatures cover this)
    json TEXT NOT NULL,
    -- known but not part of the room's timeline (e.g. auth events fetched over federation)
    outlier SMALLINT NOT NULL DEFAULT 0,
    rejected_reason TEXT,
    -- the redaction event that applies to this event, once it is known to apply
    redacted_by TEXT,
    -- for state events: the event this one replaced in the room state (prev_content)
    replaces_state TEXT
);
CREATE INDEX events_room_stream ON events (room_id, stream_ordering);
CREATE INDEX events_room_topo ON events (room_id, depth, stream_ordering);
CREATE INDEX events_room_type ON events (room_id, type, state_key);

CREATE TABLE event_edges (
    event_id TEXT NOT NULL,
    prev_event_id TEXT NOT NULL,
    PRIMARY KEY (event_id, prev_event_id)
);
CREATE INDEX event_edges_prev ON event_edges (prev_event_id);

CREATE TABLE event_auth (
    event_id TEXT NOT NULL,
    auth_id TEXT NOT NULL,
    PRIMARY KEY (event_id, auth_id)
);

CREATE TABLE forward_extremities (
    room_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (room_id, event_id)
);

CREATE TABLE state_groups (
    id BIGINT PRIMARY KEY,
    room_id TEXT NOT NULL,
    -- NULL for a full snapshot; otherwise the group this one is a delta against
    prev_group BIGINT,
    -- number of deltas between this group and the last snapshot
    chain_length INTEGER NOT NULL
);

CREATE TABLE state_group_entries (
    state_group BIGINT NOT NULL,
    type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    -- NULL removes the key (state resolution can drop a key)
    event_id TEXT,
    PRIMARY KEY (state_group, type, state_key)
);

-- The state after each (non-outlier) event.
CREATE TABLE event_state_groups (
    event_id TEXT PRIMARY KEY,
    state_group BIGINT NOT NULL
);

CREATE TABLE current_state (
    room_id TEXT NOT NULL,
    type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (room_id, type, state_key)
);

-- Each user's current membership of each room (derived from current_state).
CREATE TABLE room_memberships (
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    membership TEXT NOT NULL,
    event_id TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL,
    sender TEXT NOT NULL,
    displayname TEXT,
    avatar_url TEXT,
    forgotten SMALLINT NOT NULL DEFAULT 0,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX room_memberships_user ON room_memberships (user_id, membership);

-- Every membership change, for "who was in the room at stream position X".
CREATE TABLE membership_history (
    stream_ordering BIGINT NOT NULL,
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    membership TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (stream_ordering, user_id)
);
CREATE INDEX membership_history_user ON membership_history (user_id, stream_ordering);

-- Idempotent sends: (user, device, txn_id) -> the event it created.
CREATE TABLE event_txn_ids (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id)
);

CREATE TABLE event_relations (
    event_id TEXT PRIMARY KEY,
    relates_to_id TEXT NOT NULL,
    relation_type TEXT NOT NULL,
    aggregation_key TEXT,
    room_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    type TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL
);
CREATE INDEX event_relations_target ON event_relations (relates_to_id, relation_type);

CREATE TABLE redactions (
    event_id TEXT PRIMARY KEY,
    redacts TEXT NOT NULL
);
CREATE INDEX redactions_redacts ON redactions (redacts);

CREATE TABLE room_aliases (
    room_alias TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    creator TEXT NOT NULL,
    created_ts BIGINT NOT NULL
);
CREATE INDEX room_aliases_room ON room_aliases (room_id);
CREATE INDEX event_txn_ids_event ON event_txn_ids (event_id);
