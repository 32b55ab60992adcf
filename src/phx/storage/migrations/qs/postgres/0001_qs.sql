-- Queuing Service schema (phx.queuing.store).

-- The QS's own key pairs: the signing key and the QueueConfig encryption key (private halves).
CREATE TABLE qs_keys (
    name       TEXT    PRIMARY KEY,
    value      BYTEA    NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE qs_user_records (
    qs_uid           BYTEA    PRIMARY KEY,  -- 16-byte UUID
    auth_key         BYTEA    NOT NULL,     -- QS user record auth key (Ed25519 public key)
    friendship_token BYTEA    NOT NULL UNIQUE,
    created_at       BIGINT NOT NULL
);

CREATE TABLE qs_client_records (
    client_id            BYTEA    PRIMARY KEY,  -- the client UUID of the QsCid; also its queue id
    qs_uid               BYTEA    NOT NULL REFERENCES qs_user_records (qs_uid) ON DELETE CASCADE,
    auth_key             BYTEA    NOT NULL,     -- QS client record auth key (Ed25519 public key)
    encrypted_push_token BYTEA,                 -- NULL: no push token
    activity_time        BIGINT NOT NULL,  -- unix seconds of the last dequeue (or creation)
    blocklist_salt       BYTEA    NOT NULL,
    blocklist            BYTEA    NOT NULL,     -- concatenated 32-byte salted group-id hashes
    created_at           BIGINT NOT NULL
);
CREATE INDEX qs_client_records_by_user ON qs_client_records (qs_uid);
CREATE INDEX qs_client_records_by_activity ON qs_client_records (activity_time);

CREATE TABLE qs_key_packages (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    client_id   BYTEA    NOT NULL REFERENCES qs_client_records (client_id) ON DELETE CASCADE,
    last_resort BIGINT NOT NULL,  -- 0 / 1
    add_package BYTEA    NOT NULL   -- encoded AddPackage
);
CREATE INDEX qs_key_packages_by_client ON qs_key_packages (client_id, last_resort, id);

-- Ratcheted queues (phx.queues): one row per queue, its secret ratchet state.
CREATE TABLE qs_queues (
    queue_id       BYTEA PRIMARY KEY REFERENCES qs_client_records (client_id) ON DELETE CASCADE,
    encryption_key BYTEA NOT NULL,  -- the owner's HPKE public key
    ratchet_key    BYTEA NOT NULL,
    next_sequence  BIGINT NOT NULL,
    last_rotation  BIGINT NOT NULL   -- unix seconds of the last fresh-randomness update
);
CREATE TABLE qs_queue_messages (
    queue_id        BYTEA NOT NULL REFERENCES qs_queues (queue_id) ON DELETE CASCADE,
    sequence_number BIGINT NOT NULL,
    item_type       BIGINT NOT NULL,
    kem_output      BYTEA NOT NULL,
    ciphertext      BYTEA NOT NULL,
    PRIMARY KEY (queue_id, sequence_number)
);
