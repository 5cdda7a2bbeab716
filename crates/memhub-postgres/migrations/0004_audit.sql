-- The audit chain, shared by every replica (the embedded mode keeps it in
-- audit.db). Rows are the text their hashes cover (targets and filters as the JSON
-- text written, never re-encoded), so the chain verifies the same as audit.db's.
-- Appenders take the transaction-scoped advisory lock AUDIT_LOCK, read the head
-- and insert after it: one chain, whichever replica writes.
CREATE TABLE audit_log (
    seq BIGINT PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    role TEXT NOT NULL,
    tenant TEXT NOT NULL,
    action TEXT NOT NULL,
    targets TEXT NOT NULL,
    filters TEXT NOT NULL,
    outcome TEXT NOT NULL,
    status INTEGER NOT NULL,
    client TEXT NOT NULL,
    request_id TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX audit_log_at ON audit_log (at);
