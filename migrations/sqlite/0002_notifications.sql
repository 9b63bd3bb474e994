-- Outbound notifications: the same shape as migrations/postgres. Times are unix ms.

CREATE TABLE notification_cursors (
    tenant_id TEXT    NOT NULL,
    consumer  TEXT    NOT NULL,
    seq       INTEGER NOT NULL CHECK (seq >= 0),
    PRIMARY KEY (tenant_id, consumer)
);

CREATE TABLE deliveries (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id       TEXT    NOT NULL,
    kind            TEXT    NOT NULL,
    target          TEXT    NOT NULL,
    msg_id          TEXT    NOT NULL,
    event_seq       INTEGER NOT NULL CHECK (event_seq >= 1),
    payload         BLOB    NOT NULL,
    state           TEXT    NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    last_status     INTEGER,
    last_error      TEXT,
    UNIQUE (tenant_id, kind, target, msg_id)
);

CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX deliveries_by_tenant ON deliveries (tenant_id, id);

CREATE TABLE delivery_attempts (
    delivery_id  INTEGER NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    attempt      INTEGER NOT NULL CHECK (attempt >= 1),
    attempted_at INTEGER NOT NULL,
    status       INTEGER,
    error        TEXT,
    duration_ms  INTEGER NOT NULL CHECK (duration_ms >= 0),
    PRIMARY KEY (delivery_id, attempt)
);

-- What a delivery handler must remember between deliveries, by key: for Slack,
-- where a review's message was posted, so later deliveries update it.
CREATE TABLE notification_notes (
    tenant_id TEXT NOT NULL,
    key       TEXT NOT NULL,
    value     TEXT NOT NULL,
    PRIMARY KEY (tenant_id, key)
);
