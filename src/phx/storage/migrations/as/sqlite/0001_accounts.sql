-- Authentication Service: key material, accounts, clients, connection packages, aliases, the ephemeral
-- OPAQUE entries, token issuance records, and the Privacy Pass issuer keys and spent-token store (shared
-- with the DS and QS, which redeem tokens against the same database). Times are unix seconds.

-- AS credentials: self-signed roots and the intermediates they sign (book: credentials.md).
CREATE TABLE as_signing_credentials (
    fingerprint BLOB    PRIMARY KEY,
    kind        TEXT    NOT NULL CHECK (kind IN ('root', 'intermediate')),
    credential  BLOB    NOT NULL,
    private_key BLOB,               -- NULL when the key is kept offline
    not_before  INTEGER NOT NULL,
    not_after   INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
) STRICT;

-- The published revocation list; an entry is dropped once the credential would have expired anyway.
CREATE TABLE as_revoked_credentials (
    fingerprint BLOB    PRIMARY KEY,
    not_after   INTEGER NOT NULL,
    revoked_at  INTEGER NOT NULL
) STRICT;

-- Server-side secrets of the AS (the OPAQUE server setup).
CREATE TABLE as_secrets (
    name       TEXT    PRIMARY KEY,
    value      BLOB    NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;

CREATE TABLE as_users (
    user_id       TEXT    PRIMARY KEY,   -- <uuid>@<domain>
    opaque_record BLOB    NOT NULL,      -- OPAQUE password file
    user_profile  BLOB    NOT NULL,      -- encrypted under the user's profile key (opaque to the AS)
    created_at    INTEGER NOT NULL
) STRICT;

CREATE TABLE as_clients (
    client_id     TEXT    PRIMARY KEY,   -- <user uuid>.<client uuid>@<domain>
    user_id       TEXT    NOT NULL REFERENCES as_users (user_id) ON DELETE CASCADE,
    queue_id      BLOB    NOT NULL UNIQUE,  -- the direct queue's id (the encoded ClientId)
    credential    BLOB    NOT NULL,
    fingerprint   BLOB    NOT NULL,
    not_after     INTEGER NOT NULL,      -- the credential's
    created_at    INTEGER NOT NULL,
    activity_time INTEGER NOT NULL
) STRICT;
CREATE INDEX as_clients_user ON as_clients (user_id);

CREATE TABLE as_connection_packages (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    client_id TEXT    NOT NULL REFERENCES as_clients (client_id) ON DELETE CASCADE,
    user_id   TEXT    NOT NULL,
    package   BLOB    NOT NULL,          -- ConnectionPackage
    not_after INTEGER NOT NULL
) STRICT;
CREATE INDEX as_connection_packages_user ON as_connection_packages (user_id, id);
CREATE INDEX as_connection_packages_client ON as_connection_packages (client_id);

CREATE TABLE as_aliases (
    alias         TEXT    PRIMARY KEY,
    queue_id      BLOB    NOT NULL UNIQUE,  -- the alias queue's id (the encoded Alias)
    auth_key      BLOB    NOT NULL,
    created_at    INTEGER NOT NULL,
    activity_time INTEGER NOT NULL
) STRICT;

CREATE TABLE as_alias_packages (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    alias     TEXT    NOT NULL REFERENCES as_aliases (alias) ON DELETE CASCADE,
    payload   BLOB    NOT NULL,          -- ConnectionPackagePayload
    not_after INTEGER NOT NULL
) STRICT;
CREATE INDEX as_alias_packages_alias ON as_alias_packages (alias, id);

-- The book's ephemeral OPAQUE DB: pending registrations ('register:<user id>'), client additions
-- ('add:<client id>') and 2FA logins ('login:<client id>').
CREATE TABLE as_opaque_pending (
    key               TEXT    PRIMARY KEY,
    client_credential BLOB,
    client_csr        BLOB,
    server_state      BLOB,
    expires_at        INTEGER NOT NULL
) STRICT;
CREATE INDEX as_opaque_pending_expiry ON as_opaque_pending (expires_at);

-- Token issuance records: tokens issued per client (and per remote domain) in the current time frame.
CREATE TABLE as_token_issuance (
    client_id TEXT    PRIMARY KEY,
    epoch     INTEGER NOT NULL,
    issued    INTEGER NOT NULL
) STRICT;

CREATE TABLE as_domain_token_issuance (
    domain TEXT    PRIMARY KEY,
    epoch  INTEGER NOT NULL,
    issued INTEGER NOT NULL
) STRICT;

-- Failed OPAQUE logins per user in the current window: throttles online password guessing.
CREATE TABLE as_login_failures (
    user_id      TEXT    PRIMARY KEY,
    window_start INTEGER NOT NULL,
    failures     INTEGER NOT NULL
) STRICT;

-- Privacy Pass issuer keys, one per time frame (phx.privacypass.keys).
CREATE TABLE pp_issuer_keys (
    epoch      INTEGER PRIMARY KEY,
    seed       BLOB    NOT NULL,
    key_id     BLOB    NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
) STRICT;

-- Spent tokens, kept while their key can redeem (phx.privacypass.redeemer).
CREATE TABLE pp_spent_tokens (
    key_id BLOB    NOT NULL,
    nonce  BLOB    NOT NULL,
    epoch  INTEGER NOT NULL,
    PRIMARY KEY (key_id, nonce)
) STRICT, WITHOUT ROWID;
CREATE INDEX pp_spent_tokens_epoch ON pp_spent_tokens (epoch);

-- Direct queues of clients and queues of aliases: the shared ratcheted queues (phx.queues.store,
-- DDL copied verbatim from queue_schema_sql; a test checks the copy).
-- Ratcheted queues (phx.queues): one row per queue, its secret ratchet state.
CREATE TABLE as_direct_queues (
    queue_id       BLOB PRIMARY KEY REFERENCES as_clients (queue_id) ON DELETE CASCADE,
    encryption_key BLOB NOT NULL,  -- the owner's HPKE public key
    ratchet_key    BLOB NOT NULL,
    next_sequence  INTEGER NOT NULL,
    last_rotation  INTEGER NOT NULL   -- unix seconds of the last fresh-randomness update
) STRICT;
CREATE TABLE as_direct_queue_messages (
    queue_id        BLOB NOT NULL REFERENCES as_direct_queues (queue_id) ON DELETE CASCADE,
    sequence_number INTEGER NOT NULL,
    item_type       INTEGER NOT NULL,
    kem_output      BLOB NOT NULL,
    ciphertext      BLOB NOT NULL,
    PRIMARY KEY (queue_id, sequence_number)
) STRICT;
-- Ratcheted queues (phx.queues): one row per queue, its secret ratchet state.
CREATE TABLE as_alias_queues (
    queue_id       BLOB PRIMARY KEY REFERENCES as_aliases (queue_id) ON DELETE CASCADE,
    encryption_key BLOB NOT NULL,  -- the owner's HPKE public key
    ratchet_key    BLOB NOT NULL,
    next_sequence  INTEGER NOT NULL,
    last_rotation  INTEGER NOT NULL   -- unix seconds of the last fresh-randomness update
) STRICT;
CREATE TABLE as_alias_queue_messages (
    queue_id        BLOB NOT NULL REFERENCES as_alias_queues (queue_id) ON DELETE CASCADE,
    sequence_number INTEGER NOT NULL,
    item_type       INTEGER NOT NULL,
    kem_output      BLOB NOT NULL,
    ciphertext      BLOB NOT NULL,
    PRIMARY KEY (queue_id, sequence_number)
) STRICT;
