-- The pull worker's ledger, shared by every replica (the embedded store keeps it in
-- ingest.db), so the replica that takes over the pull worker does not ingest an
-- upload again. The ingest bucket belongs to the deployment, not to a tenant: on
-- Citus these are reference tables.
CREATE TABLE ingest_uploads (
    key TEXT PRIMARY KEY,
    system_id TEXT NOT NULL,
    layout TEXT NOT NULL,
    etag TEXT,
    size BIGINT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    next_attempt_at BIGINT,
    rows_read BIGINT NOT NULL DEFAULT 0,
    rows_written BIGINT NOT NULL DEFAULT 0,
    rows_refused BIGINT NOT NULL DEFAULT 0,
    updated_at BIGINT NOT NULL
);
CREATE TABLE ingest_row_hashes (
    system_id TEXT NOT NULL,
    source TEXT NOT NULL,
    row_id TEXT NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (system_id, source, row_id)
);
