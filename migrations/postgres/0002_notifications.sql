-- Outbound notifications: how far the notifier has read each tenant's log, the
-- deliveries that produced (webhooks, and kinds dispatched by registered
-- handlers such as Slack), and every attempt at each. Times are unix ms.

-- The last seq whose deliveries a consumer has enqueued. It moves in the same
-- transaction that stores those deliveries, so a crash can neither skip an
-- event nor enqueue one twice.
CREATE TABLE notification_cursors (
    tenant_id TEXT   NOT NULL,
    consumer  TEXT   NOT NULL,
    seq       BIGINT NOT NULL CHECK (seq >= 0),
    PRIMARY KEY (tenant_id, consumer)
);

CREATE TABLE deliveries (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id       TEXT   NOT NULL,
    -- Who dispatches it: 'webhook', or a kind with a registered handler.
    kind            TEXT   NOT NULL,
    -- Where it goes in the kind's terms (for a webhook, its id).
    target          TEXT   NOT NULL,
    -- The same for every retry, so receivers can drop duplicates.
    msg_id          TEXT   NOT NULL,
    event_seq       BIGINT NOT NULL CHECK (event_seq >= 1),
    payload         BYTEA  NOT NULL,
    state           TEXT   NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        BIGINT NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- While an attempt is in flight: when its lease ends.
    next_attempt_at BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    last_status     BIGINT,
    last_error      TEXT,
    UNIQUE (tenant_id, kind, target, msg_id)
);

CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX deliveries_by_tenant ON deliveries (tenant_id, id);

CREATE TABLE delivery_attempts (
    delivery_id  BIGINT NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    attempt      BIGINT NOT NULL CHECK (attempt >= 1),
    attempted_at BIGINT NOT NULL,
    -- NULL when the receiver did not answer.
    status       BIGINT,
    error        TEXT,
    duration_ms  BIGINT NOT NULL CHECK (duration_ms >= 0),
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
