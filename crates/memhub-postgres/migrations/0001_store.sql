-- The source of truth of a memhub store on PostgreSQL: the same tables as the
-- embedded store's memhub.db. Times are microseconds since the Unix epoch (what the
-- engine speaks); every table carries `tenant` where a tenant owns its rows, so the
-- schema can be distributed by tenant (Citus).
CREATE TABLE memories (
    seq BIGSERIAL PRIMARY KEY,
    id UUID NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    system_id TEXT NOT NULL,
    memory_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    content TEXT NOT NULL,
    attributes JSONB NOT NULL,
    metadata JSONB NOT NULL,
    tags JSONB NOT NULL,
    user_id TEXT,
    agent_id TEXT,
    session_id TEXT,
    project TEXT,
    created_at BIGINT NOT NULL,
    ingested_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    expires_at BIGINT,
    embedding REAL[],
    embedding_model TEXT,
    content_hash TEXT NOT NULL,
    version BIGINT NOT NULL,
    ingestion_method TEXT NOT NULL,
    tier TEXT NOT NULL DEFAULT 'hot',
    UNIQUE (tenant, system_id, memory_id)
);
CREATE INDEX memories_tenant_memory_id ON memories (tenant, memory_id);

CREATE TABLE memory_history (
    id UUID NOT NULL,
    version BIGINT NOT NULL,
    tenant TEXT NOT NULL,
    system_id TEXT NOT NULL,
    memory_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    content TEXT NOT NULL,
    attributes JSONB NOT NULL,
    metadata JSONB NOT NULL,
    tags JSONB NOT NULL,
    user_id TEXT,
    agent_id TEXT,
    session_id TEXT,
    project TEXT,
    created_at BIGINT NOT NULL,
    ingested_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    expires_at BIGINT,
    embedding REAL[],
    embedding_model TEXT,
    content_hash TEXT NOT NULL,
    ingestion_method TEXT NOT NULL,
    tier TEXT NOT NULL DEFAULT 'hot',
    superseded_at BIGINT NOT NULL,
    PRIMARY KEY (id, version)
);

-- The change log. `seq` is taken while the writer holds the store's write lock (a
-- transaction-scoped advisory lock), so sequence order is commit order: a reader
-- that has seen seq N never later finds a change below N commit.
CREATE TABLE changes (
    seq BIGINT PRIMARY KEY,
    op TEXT NOT NULL,
    "row" BIGINT,
    tenant TEXT NOT NULL,
    id UUID NOT NULL,
    memory_id TEXT,
    system_id TEXT,
    kind TEXT,
    user_id TEXT,
    version BIGINT,
    at BIGINT NOT NULL
);
CREATE SEQUENCE changes_seq AS BIGINT;
CREATE INDEX changes_id ON changes (id);

CREATE TABLE store_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE kind_schemas (
    kind TEXT NOT NULL,
    version INTEGER NOT NULL,
    description TEXT NOT NULL,
    schema JSONB NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (kind, version)
);

CREATE TABLE retention_policies (
    tenant TEXT NOT NULL,
    kind TEXT NOT NULL,
    system_id TEXT NOT NULL DEFAULT '',
    ttl_seconds BIGINT NOT NULL,
    PRIMARY KEY (tenant, kind, system_id)
);

CREATE TABLE cold_files (
    path TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    system_id TEXT NOT NULL,
    min_created BIGINT NOT NULL,
    max_created BIGINT NOT NULL,
    "rows" BIGINT NOT NULL,
    bytes BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX cold_files_partition ON cold_files (tenant, system_id, min_created);

CREATE TABLE cold_memories (
    id UUID PRIMARY KEY,
    tenant TEXT NOT NULL,
    system_id TEXT NOT NULL,
    memory_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    user_id TEXT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    file TEXT NOT NULL,
    UNIQUE (tenant, system_id, memory_id)
);
CREATE INDEX cold_memories_file ON cold_memories (file);

CREATE TABLE kg_entities (
    id UUID PRIMARY KEY,
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    entity_type TEXT NOT NULL,
    observations JSONB NOT NULL,
    properties JSONB NOT NULL,
    metadata JSONB NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (tenant, name, entity_type)
);

CREATE TABLE kg_relations (
    id UUID PRIMARY KEY,
    tenant TEXT NOT NULL,
    from_entity TEXT NOT NULL,
    to_entity TEXT NOT NULL,
    relation_type TEXT NOT NULL,
    properties JSONB NOT NULL,
    metadata JSONB NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (tenant, from_entity, to_entity, relation_type)
);
