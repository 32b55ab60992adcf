-- Authentication Service: key material, accounts, clients, connection packages, aliases, the ephemeral
-- OPAQUE entries, token issuance records, and the Privacy Pass issuer keys and spent-token store (shared
-- with the DS and QS, which redeem tokens against the same database). Times are unix seconds.

-- AS credentials: self-signed roots and the intermediates they sign (book: credentials.md).
CREATE TABLE as_signing_credentials (
    fingerprint BYTEA   PRIMARY KEY,
    kind        TEXT    NOT NULL CHECK (kind IN ('root', 'intermediate')),
    credential  BYTEA   NOT NULL,
    private_key BYTEA,               -- NULL when the key is kept offline
    not_before  BIGINT  NOT NULL,
    not_after   BIGINT  NOT NULL,
    created_at  BIGINT  NOT NULL
);

-- The published revocation list; an entry is dropped once the credential would have expired anyway.
CREATE TABLE as_revoked_credentials (
    fingerprint BYTEA   PRIMARY KEY,
    not_after   BIGINT  NOT NULL,
    revoked_at  BIGINT  NOT NULL
);

-- Server-side secrets of the AS (the OPAQUE server setup).
CREATE TABLE as_secrets (
    name       TEXT    PRIMARY KEY,
    value      BYTEA   NOT NULL,
    created_at BIGINT  NOT NULL
);

CREATE TABLE as_users (
    user_id       TEXT    PRIMARY KEY,   -- <uuid>@<domain>
    opaque_record BYTEA   NOT NULL,      -- OPAQUE password file
    user_profile  BYTEA   NOT NULL,      -- encrypted under the user's profile key (opaque to the AS)
    created_at    BIGINT  NOT NULL
);

CREATE TABLE as_clients (
    client_id     TEXT    PRIMARY KEY,   -- <user uuid>.<client uuid>@<domain>
    user_id       TEXT    NOT NULL REFERENCES as_users (user_id) ON DELETE CASCADE,
    queue_id      BYTEA   NOT NULL UNIQUE,  -- the direct queue's id (the encoded ClientId)
    credential    BYTEA   NOT NULL,
    fingerprint   BYTEA   NOT NULL,
    not_after     BIGINT  NOT NULL,      -- the credential's
    created_at    BIGINT  NOT NULL,
    activity_time BIGINT  NOT NULL
);
CREATE INDEX as_clients_user ON as_clients (user_id);

CREATE TABLE as_connection_packages (
    id        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    client_id TEXT    NOT NULL REFERENCES as_clients (client_id) ON DELETE CASCADE,
    user_id   TEXT    NOT NULL,
    package   BYTEA   NOT NULL,          -- ConnectionPackage
    not_after BIGINT  NOT NULL
);
CREATE INDEX as_connection_packages_user ON as_connection_packages (user_id, id);
CREATE INDEX as_connection_packages_client ON as_connection_packages (client_id);

CREATE TABLE as_aliases (
    alias         TEXT    PRIMARY KEY,
    queue_id      BYTEA   NOT NULL UNIQUE,  -- the alias queue's id (the encoded Alias)
    auth_key      BYTEA   NOT NULL,
    created_at    BIGINT  NOT NULL,
    activity_time BIGINT  NOT NULL
);

CREATE TABLE as_alias_packages (
    id        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alias     TEXT    NOT NULL REFERENCES as_aliases (alias) ON DELETE CASCADE,
    payload   BYTEA   NOT NULL,          -- ConnectionPackagePayload
    not_after BIGINT  NOT NULL
);
CREATE INDEX as_alias_packages_alias ON as_alias_packages (alias, id);

-- The book's ephemeral OPAQUE DB: pending registrations ('register:<user id>'), client additions
-- ('add:<client id>') and 2FA logins ('login:<client id>').
CREATE TABLE as_opaque_pending (
    key               TEXT    PRIMARY KEY,
    client_credential BYTEA,
    client_csr        BYTEA,
    server_state      BYTEA,
    expires_at        BIGINT  NOT NULL
);
CREATE INDEX as_opaque_pending_expiry ON as_opaque_pending (expires_at);

-- Token issuance records: tokens issued per client (and per remote domain) in the current time frame.
CREATE TABLE as_token_issuance (
    client_id TEXT    PRIMARY KEY,
    epoch     BIGINT  NOT NULL,
    issued    BIGINT  NOT NULL
);

CREATE TABLE as_domain_token_issuance (
    domain TEXT    PRIMARY KEY,
    epoch  BIGINT  NOT NULL,
    issued BIGINT  NOT NULL
);

-- Failed OPAQUE logins per user in the current window: throttles online password guessing.
CREATE TABLE as_login_failures (
    user_id      TEXT    PRIMARY KEY,
    window_start BIGINT  NOT NULL,
    failures     BIGINT  NOT NULL
);

-- Privacy Pass issuer keys, one per time frame (phx.privacypass.keys).
CREATE TABLE pp_issuer_keys (
    epoch      BIGINT  PRIMARY KEY,
    seed       BYTEA   NOT NULL,
    key_id     BYTEA   NOT NULL UNIQUE,
    created_at BIGINT  NOT NULL
);

-- Spent tokens, kept while their key can redeem (phx.privacypass.redeemer).
CREATE TABLE pp_spent_tokens (
    key_id BYTEA   NOT NULL,
    nonce  BYTEA   NOT NULL,
    epoch  BIGINT  NOT NULL,
    PRIMARY KEY (key_id, nonce)
);
CREATE INDEX pp_spent_tokens_epoch ON pp_spent_tokens (epoch);

-- Direct queues of clients and queues of aliases: the shared ratcheted queues (phx.queues.store,
-- DDL copied verbatim from queue_schema_sql; a test checks the copy).
-- Ratcheted queues (phx.queues): one row per queue, its secret ratchet state.
CREATE TABLE as_direct_queues (
    queue_id       BYTEA PRIMARY KEY REFERENCES as_clients (queue_id) ON DELETE CASCADE,
    encryption_key BYTEA NOT NULL,  -- the owner's HPKE public key
    ratchet_key    BYTEA NOT NULL,
    next_sequence  BIGINT NOT NULL,
    last_rotation  BIGINT NOT NULL   -- unix seconds of the last fresh-randomness update
);
CREATE TABLE as_direct_queue_messages (
    queue_id        BYTEA NOT NULL REFERENCES as_direct_queues (queue_id) ON DELETE CASCADE,
    sequence_number BIGINT NOT NULL,
    item_type       BIGINT NOT NULL,
    kem_output      BYTEA NOT NULL,
    ciphertext      BYTEA NOT NULL,
    PRIMARY KEY (queue_id, sequence_number)
);
-- Ratcheted queues (phx.queues): one row per queue, its secret ratchet state.
CREATE TABLE as_alias_queues (
    queue_id       BYTEA PRIMARY KEY REFERENCES as_aliases (queue_id) ON DELETE CASCADE,
    encryption_key BYTEA NOT NULL,  -- the owner's HPKE public key
    ratchet_key    BYTEA NOT NULL,
    next_sequence  BIGINT NOT NULL,
    last_rotation  BIGINT NOT NULL   -- unix seconds of the last fresh-randomness update
);
CREATE TABLE as_alias_queue_messages (
    queue_id        BYTEA NOT NULL REFERENCES as_alias_queues (queue_id) ON DELETE CASCADE,
    sequence_number BIGINT NOT NULL,
    item_type       BIGINT NOT NULL,
    kem_output      BYTEA NOT NULL,
    ciphertext      BYTEA NOT NULL,
    PRIMARY KEY (queue_id, sequence_number)
);
