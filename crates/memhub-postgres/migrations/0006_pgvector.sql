-- Memories' vectors as pgvector's `vector` when the database has the extension (or
-- this role may create it) and the replica migrating asks for it
-- (storage.postgres.pgvector, default on): SQL users, BI tools and CDC pipelines
-- then read them as vectors. The type has no fixed dimension because memories of
-- different embedding models (different dimensions) share the column; an HNSW
-- index for one model is an expression index, e.g.
--   CREATE INDEX ON memories USING hnsw ((embedding::vector(384)) vector_cosine_ops)
--     WHERE embedding_model = 'all-MiniLM-L6-v2';
-- memhub reads the column as real[] either way and its own search does not use
-- pgvector. Without the extension the column stays real[]; installing it later,
-- `ALTER TABLE memories ALTER COLUMN embedding TYPE vector USING embedding::vector`
-- (and the same for memory_history) converts it while memhub keeps running.
DO $$
BEGIN
    IF coalesce(current_setting('memhub.pgvector', true), 'auto') = 'off'
        OR NOT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'vector') THEN
        RETURN;
    END IF;
    BEGIN
        CREATE EXTENSION IF NOT EXISTS vector;
    EXCEPTION WHEN insufficient_privilege THEN
        RAISE NOTICE 'pgvector is available but this role cannot create the extension: vectors stay real[]';
        RETURN;
    END;
    ALTER TABLE memories ALTER COLUMN embedding TYPE vector USING embedding::vector;
    ALTER TABLE memory_history ALTER COLUMN embedding TYPE vector USING embedding::vector;
END
$$;
