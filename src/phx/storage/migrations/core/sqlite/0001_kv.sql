-- Server-wide small values (settings, the server's own key material), keyed by a dotted name.
CREATE TABLE kv (
    key        TEXT    PRIMARY KEY,
    value      BLOB    NOT NULL,
    updated_at INTEGER NOT NULL  -- unix seconds
) STRICT;
