-- Delivery Service schema (phx.delivery.store).

-- The DS's own keys (its external-sender signing key) and small DS-wide values (the padding target).
CREATE TABLE ds_keys (
    name       TEXT    PRIMARY KEY,
    value      BLOB    NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;

-- GroupStateDbEntry, one row per group. A row without a roster is a group id reservation.
CREATE TABLE ds_groups (
    group_id       BLOB    PRIMARY KEY,  -- encoded GroupId
    roster         BLOB,                 -- EAR-encrypted hot section of the group state
    cold           BLOB,                 -- EAR-encrypted cold section (tree, GroupInfo, credentials, ...)
    queue_id_key   BLOB,                 -- QueueIdEncryptionKey (HPKE public key)
    last_used      INTEGER NOT NULL,     -- first second of the month of the last state change
    reserved_until INTEGER,              -- reservations only: when the reservation lapses
    version        INTEGER NOT NULL      -- bumped on every write (cache validation)
) STRICT;
CREATE INDEX ds_groups_by_last_used ON ds_groups (last_used);
CREATE INDEX ds_groups_by_reservation ON ds_groups (reserved_until) WHERE reserved_until IS NOT NULL;

-- Past group states for Welcome information, one EAR-encrypted ciphertext per epoch.
CREATE TABLE ds_past_states (
    group_id BLOB    NOT NULL,
    epoch    INTEGER NOT NULL,
    state    BLOB    NOT NULL,
    PRIMARY KEY (group_id, epoch)
) STRICT;

-- Sealed configs of queues the QS reported deleted (GroupStateDbEntry.deleted_queues).
CREATE TABLE ds_deleted_queues (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id BLOB    NOT NULL,
    sealed   BLOB    NOT NULL  -- HPKE under the group's QueueIdEncryptionKey
) STRICT;
CREATE INDEX ds_deleted_queues_by_group ON ds_deleted_queues (group_id);

-- Fan-outs of accepted state changes not yet handed to the QS, EAR-encrypted, in order.
CREATE TABLE ds_outbox (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id   BLOB    NOT NULL,
    fan_out    BLOB    NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;
CREATE INDEX ds_outbox_by_group ON ds_outbox (group_id, id);
