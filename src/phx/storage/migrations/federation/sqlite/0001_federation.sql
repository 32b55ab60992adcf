-- Federation schema (phx.federation.outbox_store).

-- The durable outbox: one row per QS-to-QS message waiting for its destination, written in the
-- transaction that accepted the fan-out. Sent in id order per destination, deleted once answered.
CREATE TABLE fed_outbox (
    id          INTEGER PRIMARY KEY,     -- send order within a destination
    destination TEXT    NOT NULL,        -- home domain of the receiving QS
    message_id  BLOB    NOT NULL,        -- 16 random bytes, signed into the frame
    created_at  INTEGER NOT NULL,        -- unix seconds when queued (signed into the frame)
    payload     BLOB    NOT NULL         -- encoded FanOutMessage; signed when sent
) STRICT;
CREATE INDEX fed_outbox_by_destination ON fed_outbox (destination, id);
CREATE INDEX fed_outbox_by_age ON fed_outbox (created_at);

-- Per-destination delivery state, shared by every instance: persisted back-off and the sending lease.
CREATE TABLE fed_destinations (
    destination    TEXT    PRIMARY KEY,
    failures       INTEGER NOT NULL DEFAULT 0,   -- consecutive transient failures
    retry_at_ms    INTEGER NOT NULL DEFAULT 0,   -- unix ms; no full attempt before (probes may)
    last_error     TEXT    NOT NULL DEFAULT '',
    last_success   INTEGER NOT NULL DEFAULT 0,   -- unix seconds
    lease_owner    TEXT,                         -- instance sending to it now, if any
    lease_until_ms INTEGER NOT NULL DEFAULT 0,   -- the lease lapses then (instance died)
    sent_total     INTEGER NOT NULL DEFAULT 0,   -- messages answered by the peer
    dropped_total  INTEGER NOT NULL DEFAULT 0    -- refused for good or expired
) STRICT;

-- Ids of received QS-to-QS messages, kept at least federation.dedup_retention: a repeat is answered
-- with the first answer (result) and not enqueued again.
CREATE TABLE fed_received (
    source      TEXT    NOT NULL,
    message_id  BLOB    NOT NULL,
    digest      BLOB    NOT NULL,   -- SHA-256 of the signed content: same id, other content = conflict
    received_at INTEGER NOT NULL,   -- unix seconds
    result      BLOB    NOT NULL,   -- encoded QueueDeleted vector of the first answer
    PRIMARY KEY (source, message_id)
) STRICT;
CREATE INDEX fed_received_by_time ON fed_received (received_at);
