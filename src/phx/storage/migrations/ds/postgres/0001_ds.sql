-- Delivery Service schema (phx.delivery.store).

-- The DS's own keys (its external-sender signing key) and small DS-wide values (the padding target).
CREATE TABLE ds_keys (
    name       TEXT   PRIMARY KEY,
    value      BYTEA  NOT NULL,
    created_at BIGINT NOT NULL
);

-- GroupStateDbEntry, one row per group. A row without a roster is a group id reservation.
CREATE TABLE ds_groups (
    group_id       BYTEA  PRIMARY KEY,  -- encoded GroupId
    roster         BYTEA,               -- EAR-encrypted hot section of the group state
    cold           BYTEA,               -- EAR-encrypted cold section (tree, GroupInfo, credentials, ...)
    queue_id_key   BYTEA,               -- QueueIdEncryptionKey (HPKE public key)
    last_used      BIGINT NOT NULL,     -- first second of the month of the last state change
    reserved_until BIGINT,              -- reservations only: when the reservation lapses
    version        BIGINT NOT NULL      -- bumped on every write (cache validation)
);
CREATE INDEX ds_groups_by_last_used ON ds_groups (last_used);
CREATE INDEX ds_groups_by_reservation ON ds_groups (reserved_until) WHERE reserved_until IS NOT NULL;

-- Past group states for Welcome information, one EAR-encrypted ciphertext per epoch.
CREATE TABLE ds_past_states (
    group_id BYTEA  NOT NULL,
    epoch    BIGINT NOT NULL,
    state    BYTEA  NOT NULL,
    PRIMARY KEY (group_id, epoch)
);

-- Sealed configs of queues the QS reported deleted (GroupStateDbEntry.deleted_queues).
CREATE TABLE ds_deleted_queues (
    id       BIGSERIAL PRIMARY KEY,
    group_id BYTEA     NOT NULL,
    sealed   BYTEA     NOT NULL  -- HPKE under the group's QueueIdEncryptionKey
);
CREATE INDEX ds_deleted_queues_by_group ON ds_deleted_queues (group_id);

-- Fan-outs of accepted state changes not yet handed to the QS, EAR-encrypted, in order.
CREATE TABLE ds_outbox (
    id         BIGSERIAL PRIMARY KEY,
    group_id   BYTEA     NOT NULL,
    fan_out    BYTEA     NOT NULL,
    created_at BIGINT    NOT NULL
);
CREATE INDEX ds_outbox_by_group ON ds_outbox (group_id, id);
