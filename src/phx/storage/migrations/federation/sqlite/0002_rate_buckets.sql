-- Inbound federation rate limits shared by every instance (phx.federation.ratelimit_store).

-- One token bucket per (scope, key): scope 0 = source domain (key: its name), 1 = client queue config
-- (key: the sealed config's KEM output), 2 = queue (key: queue id). The whole state of a bucket is the
-- time it is full again; a row whose full_at has passed is a full bucket, the same as no row, and is
-- deleted by maintenance.
CREATE TABLE fed_rate_buckets (
    scope      INTEGER NOT NULL,
    bucket_key BLOB    NOT NULL,
    full_at    REAL    NOT NULL,   -- unix seconds
    PRIMARY KEY (scope, bucket_key)
) STRICT;
