-- Homeservers whose clients asked this AS for Privacy Pass tokens: first and last request, for the
-- new-domain ramp of the per-domain token allowance (as.new_domain_token_allowance). A domain not seen
-- for as.max_client_record_age is forgotten (and starts low again).
CREATE TABLE as_federated_domains (
    domain     TEXT    PRIMARY KEY,
    first_seen BIGINT  NOT NULL,
    last_seen  BIGINT  NOT NULL
);
CREATE INDEX as_federated_domains_last_seen ON as_federated_domains (last_seen);
