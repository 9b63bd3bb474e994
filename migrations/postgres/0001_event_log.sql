-- The event log, its outbox and the encrypted secret store.
-- Ids are TEXT (UUID strings) so both backends share one shape.

-- One row per tenant: the last seq and its hash. Appends lock this row
-- (SELECT ... FOR UPDATE), which serializes the appends of one tenant and keeps
-- seq gap-free while different tenants append in parallel.
CREATE TABLE tenant_heads (
    tenant_id TEXT PRIMARY KEY,
    seq       BIGINT NOT NULL CHECK (seq >= 0),
    hash      BYTEA  NOT NULL CHECK (octet_length(hash) = 32)
);

CREATE TABLE events (
    tenant_id           TEXT   NOT NULL,
    seq                 BIGINT NOT NULL CHECK (seq >= 1),
    stream              TEXT   NOT NULL,
    stream_version      BIGINT NOT NULL CHECK (stream_version >= 1),
    occurred_at_unix_ms BIGINT NOT NULL,
    actor               TEXT   NOT NULL,
    payload             BYTEA  NOT NULL,
    prev_hash           BYTEA  NOT NULL,
    hash                BYTEA  NOT NULL,
    PRIMARY KEY (tenant_id, seq),
    -- The database-level guard for optimistic concurrency: two writers can never
    -- both store version N of one stream. Its index also answers "current version".
    UNIQUE (tenant_id, stream, stream_version)
);

-- Records committed but not yet published to the bus, written in the same
-- transaction as the events. Per tenant, ids grow with seq (appends of a tenant
-- are serialized), so publishing in id order preserves each tenant's order.
CREATE TABLE outbox (
    id        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id TEXT   NOT NULL,
    seq       BIGINT NOT NULL,
    FOREIGN KEY (tenant_id, seq) REFERENCES events (tenant_id, seq)
);

-- Secrets never enter the event log. Each version is sealed separately
-- (XChaCha20-Poly1305; the associated data binds tenant, name and version).
CREATE TABLE secrets (
    tenant_id  TEXT        NOT NULL,
    name       TEXT        NOT NULL,
    version    BIGINT      NOT NULL CHECK (version >= 1),
    nonce      BYTEA       NOT NULL,
    ciphertext BYTEA       NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, name, version)
);
