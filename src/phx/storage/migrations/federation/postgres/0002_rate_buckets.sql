-- Inbound federation rate limits shared by every instance (phx.federation.ratelimit_store).

-- One token bucket per (scope, key): scope 0 = source domain (key: its name), 1 = client queue config
-- (key: the sealed config's KEM output), 2 = queue (key: queue id). The whole state of a bucket is the
-- time it is full again; a row whose full_at has passed is a full bucket, the same as no row, and is
-- deleted by maintenance. No index besides the key: charges then update rows in place (HOT).
CREATE TABLE fed_rate_buckets (
    scope      SMALLINT         NOT NULL,
    bucket_key BYTEA            NOT NULL,
    full_at    DOUBLE PRECISION NOT NULL,   -- unix seconds
    PRIMARY KEY (scope, bucket_key)
);
