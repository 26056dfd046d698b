-- Full-text search over message bodies, room names and topics (SQLite: FTS5).
CREATE VIRTUAL TABLE event_search USING fts5(
    event_id UNINDEXED,
    room_id UNINDEXED,
    key UNINDEXED,
    value,
    stream_ordering UNINDEXED,
    tokenize = 'unicode61 remove_diacritics 2'
);
