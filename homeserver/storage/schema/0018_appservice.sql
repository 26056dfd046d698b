-- Application services: what each service has still to receive, so that nothing is lost
-- while it is down or across a restart of the homeserver.

-- How far the event stream has been sorted into the services' queues (one row, 'events').
CREATE TABLE appservice_stream_positions (
    stream TEXT PRIMARY KEY,
    position BIGINT NOT NULL
);

-- Per service, in order: timeline events by reference (kind 'pdu', the JSON sent is
-- events.json), and ephemeral data, to-device messages and device-list changes by value.
CREATE TABLE appservice_queue (
    service_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    kind TEXT NOT NULL,
    event_id TEXT,
    content TEXT,
    PRIMARY KEY (service_id, seq)
);

-- Per service: the transaction in flight (sent again, identical, until acknowledged), the
-- next transaction ID, the backoff and counters for the metrics.
CREATE TABLE appservice_state (
    service_id TEXT PRIMARY KEY,
    next_txn_id BIGINT NOT NULL DEFAULT 1,
    inflight_txn_id BIGINT,
    inflight_upto_seq BIGINT,
    failure_count INTEGER NOT NULL DEFAULT 0,
    retry_at_ms BIGINT NOT NULL DEFAULT 0,
    sent_transactions BIGINT NOT NULL DEFAULT 0,
    failed_attempts BIGINT NOT NULL DEFAULT 0,
    last_error TEXT
);
