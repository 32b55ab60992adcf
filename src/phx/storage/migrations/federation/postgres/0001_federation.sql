-- Federation schema (phx.federation.outbox_store).

-- The durable outbox: one row per QS-to-QS message waiting for its destination, written in the
-- transaction that accepted the fan-out. Sent in id order per destination, deleted once answered.
CREATE TABLE fed_outbox (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- send order within a destination
    destination TEXT   NOT NULL,        -- home domain of the receiving QS
    message_id  BYTEA  NOT NULL,        -- 16 random bytes, signed into the frame
    created_at  BIGINT NOT NULL,        -- unix seconds when queued (signed into the frame)
    payload     BYTEA  NOT NULL         -- encoded FanOutMessage; signed when sent
);
CREATE INDEX fed_outbox_by_destination ON fed_outbox (destination, id);
CREATE INDEX fed_outbox_by_age ON fed_outbox (created_at);

-- Per-destination delivery state, shared by every instance: persisted back-off and the sending lease.
CREATE TABLE fed_destinations (
    destination    TEXT   PRIMARY KEY,
    failures       BIGINT NOT NULL DEFAULT 0,   -- consecutive transient failures
    retry_at_ms    BIGINT NOT NULL DEFAULT 0,   -- unix ms; no full attempt before (probes may)
    last_error     TEXT   NOT NULL DEFAULT '',
    last_success   BIGINT NOT NULL DEFAULT 0,   -- unix seconds
    lease_owner    TEXT,                        -- instance sending to it now, if any
    lease_until_ms BIGINT NOT NULL DEFAULT 0,   -- the lease lapses then (instance died)
    sent_total     BIGINT NOT NULL DEFAULT 0,   -- messages answered by the peer
    dropped_total  BIGINT NOT NULL DEFAULT 0    -- refused for good or expired
);

-- Ids of received QS-to-QS messages, kept at least federation.dedup_retention: a repeat is answered
-- with the first answer (result) and not enqueued again.
CREATE TABLE fed_received (
    source      TEXT   NOT NULL,
    message_id  BYTEA  NOT NULL,
    digest      BYTEA  NOT NULL,   -- SHA-256 of the signed content: same id, other content = conflict
    received_at BIGINT NOT NULL,   -- unix seconds
    result      BYTEA  NOT NULL,   -- encoded QueueDeleted vector of the first answer
    PRIMARY KEY (source, message_id)
);
CREATE INDEX fed_received_by_time ON fed_received (received_at);
