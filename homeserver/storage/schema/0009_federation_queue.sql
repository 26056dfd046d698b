-- Outbound federation: what each destination has still to receive, and its backoff, so
-- that a restart loses nothing and does not restart the backoff from scratch.

-- PDUs by reference: the JSON sent is events.json of that event.
CREATE TABLE federation_queue_pdus (
    destination TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (destination, stream_ordering)
);

-- Durable EDUs (device-list updates, to-device, receipts, ...; never typing).  A keyed
-- EDU replaces the earlier one of the same (destination, type, key).
CREATE TABLE federation_queue_edus (
    edu_id BIGINT PRIMARY KEY,
    destination TEXT NOT NULL,
    edu_type TEXT NOT NULL,
    edu_key TEXT,
    content TEXT NOT NULL
);
CREATE INDEX federation_queue_edus_destination ON federation_queue_edus (destination, edu_id);

-- The backoff of each destination (failure_count 0: healthy), and how far it has got.
CREATE TABLE federation_destinations (
    destination TEXT PRIMARY KEY,
    failure_count INTEGER NOT NULL DEFAULT 0,
    retry_at_ms BIGINT NOT NULL DEFAULT 0,
    last_delivered_stream BIGINT
);
