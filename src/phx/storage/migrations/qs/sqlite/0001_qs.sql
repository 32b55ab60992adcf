-- Queuing Service schema (phx.queuing.store).

-- The QS's own key pairs: the signing key and the QueueConfig encryption key (private halves).
CREATE TABLE qs_keys (
    name       TEXT    PRIMARY KEY,
    value      BLOB    NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;

CREATE TABLE qs_user_records (
    qs_uid           BLOB    PRIMARY KEY,  -- 16-byte UUID
    auth_key         BLOB    NOT NULL,     -- QS user record auth key (Ed25519 public key)
    friendship_token BLOB    NOT NULL UNIQUE,
    created_at       INTEGER NOT NULL
) STRICT;

CREATE TABLE qs_client_records (
    client_id            BLOB    PRIMARY KEY,  -- the client UUID of the QsCid; also its queue id
    qs_uid               BLOB    NOT NULL REFERENCES qs_user_records (qs_uid) ON DELETE CASCADE,
    auth_key             BLOB    NOT NULL,     -- QS client record auth key (Ed25519 public key)
    encrypted_push_token BLOB,                 -- NULL: no push token
    activity_time        INTEGER NOT NULL,  -- unix seconds of the last dequeue (or creation)
    blocklist_salt       BLOB    NOT NULL,
    blocklist            BLOB    NOT NULL,     -- concatenated 32-byte salted group-id hashes
    created_at           INTEGER NOT NULL
) STRICT;
CREATE INDEX qs_client_records_by_user ON qs_client_records (qs_uid);
CREATE INDEX qs_client_records_by_activity ON qs_client_records (activity_time);

CREATE TABLE qs_key_packages (
    id          INTEGER PRIMARY KEY,
    client_id   BLOB    NOT NULL REFERENCES qs_client_records (client_id) ON DELETE CASCADE,
    last_resort INTEGER NOT NULL,  -- 0 / 1
    add_package BLOB    NOT NULL   -- encoded AddPackage
) STRICT;
CREATE INDEX qs_key_packages_by_client ON qs_key_packages (client_id, last_resort, id);

-- Ratcheted queues (phx.queues): one row per queue, its secret ratchet state.
CREATE TABLE qs_queues (
    queue_id       BLOB PRIMARY KEY REFERENCES qs_client_records (client_id) ON DELETE CASCADE,
    encryption_key BLOB NOT NULL,  -- the owner's HPKE public key
    ratchet_key    BLOB NOT NULL,
    next_sequence  INTEGER NOT NULL,
    last_rotation  INTEGER NOT NULL   -- unix seconds of the last fresh-randomness update
) STRICT;
CREATE TABLE qs_queue_messages (
    queue_id        BLOB NOT NULL REFERENCES qs_queues (queue_id) ON DELETE CASCADE,
    sequence_number INTEGER NOT NULL,
    item_type       INTEGER NOT NULL,
    kem_output      BLOB NOT NULL,
    ciphertext      BLOB NOT NULL,
    PRIMARY KEY (queue_id, sequence_number)
) STRICT;
