-- Server-wide small values (settings, the server's own key material), keyed by a dotted name.
CREATE TABLE kv (
    key        TEXT   PRIMARY KEY,
    value      BYTEA  NOT NULL,
    updated_at BIGINT NOT NULL  -- unix seconds
);
