-- API keys, shared by every replica (the embedded store keeps them in keys.db):
-- only an argon2id hash of each secret. `systems` and `kinds` are JSON arrays as
-- text, as in keys.db. Revocation is read on every request, so a key revoked
-- through one replica is refused by all.
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL,
    name TEXT,
    role TEXT NOT NULL,
    tenant TEXT NOT NULL,
    user_id TEXT,
    systems TEXT,
    kinds TEXT,
    can_read BOOLEAN NOT NULL,
    superadmin BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT
);
CREATE INDEX api_keys_tenant ON api_keys (tenant, created_at DESC);
