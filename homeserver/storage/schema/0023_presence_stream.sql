-- /sync reads presence changes by stream position (presence_since): without this index
-- every such read scanned the whole table.
CREATE INDEX presence_stream ON presence (stream_id);
