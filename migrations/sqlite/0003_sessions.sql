-- The sessions the log records (SessionOpened, SessionClosed), one row each,
-- for listing and filtering them: a read model the control plane brings up to
-- date from the log before it reads it. Times are unix ms.
CREATE TABLE sessions (
    tenant_id         TEXT   NOT NULL,
    session_id        TEXT   NOT NULL,
    opened_seq        BIGINT NOT NULL,
    opened_at         BIGINT NOT NULL,
    grant_id          TEXT   NOT NULL,
    connection_id     TEXT   NOT NULL,
    subject           TEXT   NOT NULL,
    issuer            TEXT   NOT NULL,
    client_addr       TEXT   NOT NULL,
    worker_id         TEXT   NOT NULL,
    target_role       TEXT   NOT NULL,
    closed_at         BIGINT,
    duration_ms       BIGINT,
    bytes_from_client BIGINT NOT NULL DEFAULT 0,
    bytes_to_client   BIGINT NOT NULL DEFAULT 0,
    close_reason      TEXT,
    -- open, completed (the client ended it) or terminated (Airlock did).
    outcome           TEXT   NOT NULL CHECK (outcome IN ('open', 'completed', 'terminated')),
    PRIMARY KEY (tenant_id, session_id)
);

CREATE INDEX sessions_newest ON sessions (tenant_id, opened_at DESC, session_id DESC);

-- The last seq of each tenant's log the sessions table reflects. It moves in
-- the transaction that stores the rows, so an event is never skipped.
CREATE TABLE session_index_cursors (
    tenant_id TEXT   PRIMARY KEY NOT NULL,
    seq       BIGINT NOT NULL CHECK (seq >= 0)
);
