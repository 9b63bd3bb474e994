-- The event log, its outbox and the encrypted secret store: the same shape as
-- migrations/postgres. SQLite has one writer at a time, so appends are
-- serialized by the process (a single write connection, BEGIN IMMEDIATE).

CREATE TABLE tenant_heads (
    tenant_id TEXT PRIMARY KEY NOT NULL,
    seq       INTEGER NOT NULL CHECK (seq >= 0),
    hash      BLOB    NOT NULL CHECK (length(hash) = 32)
);

CREATE TABLE events (
    tenant_id           TEXT    NOT NULL,
    seq                 INTEGER NOT NULL CHECK (seq >= 1),
    stream              TEXT    NOT NULL,
    stream_version      INTEGER NOT NULL CHECK (stream_version >= 1),
    occurred_at_unix_ms INTEGER NOT NULL,
    actor               TEXT    NOT NULL,
    payload             BLOB    NOT NULL,
    prev_hash           BLOB    NOT NULL,
    hash                BLOB    NOT NULL,
    PRIMARY KEY (tenant_id, seq),
    UNIQUE (tenant_id, stream, stream_version)
);

CREATE TABLE outbox (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id TEXT    NOT NULL,
    seq       INTEGER NOT NULL,
    FOREIGN KEY (tenant_id, seq) REFERENCES events (tenant_id, seq)
);

CREATE TABLE secrets (
    tenant_id  TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    version    INTEGER NOT NULL CHECK (version >= 1),
    nonce      BLOB    NOT NULL,
    ciphertext BLOB    NOT NULL,
    created_at INTEGER NOT NULL DEFAULT (CAST(strftime('%s', 'now') AS INTEGER)),
    PRIMARY KEY (tenant_id, name, version)
);
