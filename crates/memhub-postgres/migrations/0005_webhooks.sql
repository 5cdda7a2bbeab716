-- Outgoing webhooks, shared by every replica (the embedded mode keeps them in
-- webhooks.db): each webhook's delivery position and batch in flight, and the
-- record of attempts. The change log is the outbox; only the leading replica
-- delivers. Secrets are stored as the embedded mode stores them (readable by
-- whoever can read this table: grant it to memhub's role only).
CREATE TABLE webhooks (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    url TEXT NOT NULL,
    ops TEXT,
    system_id TEXT,
    kind TEXT,
    user_id TEXT,
    secret TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    enabled BOOLEAN NOT NULL DEFAULT TRUE,
    disabled_reason TEXT,
    failures INTEGER NOT NULL DEFAULT 0,
    first_failure_at BIGINT,
    next_attempt_at BIGINT NOT NULL DEFAULT 0,
    delivered_through BIGINT NOT NULL,
    inflight_after BIGINT,
    inflight_through BIGINT,
    inflight_msg TEXT
);
CREATE INDEX webhooks_tenant ON webhooks (tenant);
CREATE TABLE webhook_deliveries (
    id BIGSERIAL PRIMARY KEY,
    webhook_id TEXT NOT NULL,
    msg_id TEXT NOT NULL,
    after_seq BIGINT NOT NULL,
    through_seq BIGINT NOT NULL,
    events INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    status INTEGER,
    error TEXT,
    at BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL
);
CREATE INDEX webhook_deliveries_webhook ON webhook_deliveries (webhook_id, id);
