-- Full-text search over message bodies, room names and topics (PostgreSQL: tsvector + GIN).
-- The 'simple' configuration: no language-specific stemming, so French and English
-- messages are both matched word for word.
CREATE TABLE event_search (
    event_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    key TEXT NOT NULL,
    vector TSVECTOR NOT NULL,
    stream_ordering BIGINT NOT NULL
);
CREATE INDEX event_search_vector ON event_search USING GIN (vector);
CREATE INDEX event_search_room ON event_search (room_id, stream_ordering);
