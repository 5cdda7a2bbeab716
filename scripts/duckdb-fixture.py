#!/usr/bin/env python3
"""Build Session-Buddy-shaped DuckDB files for memhub's tests and benchmarks.

Writes (or appends to) a `reflection.duckdb` with `conversations_v2` and
`reflections_v2` (or the legacy `conversations` / `reflections` with --legacy),
and optionally a `knowledge_graph.duckdb`. Rows are made by DuckDB itself from
`range()`, so 100k rows take seconds. Row i of each table is predictable, so tests
can check what the hub made of it:

  conversation i: id conv_%06d, content "Conversation i about deploying the ünïcode
    service 🚀 on host-(i % 7)", embedding[j] = sin(0.37 i + j) as FLOAT[384], NULL
    when i % 5 == 4, timestamp = start + i minutes, user alice/bob (even/odd),
    session s(i % 3), metadata {"i": i, "lang": "en", "note": "ünï"}; legacy conversations
    have metadata {"i": i, "lang": "en", "user_id": "ann", "session_id": "s(i % 2)",
    "tags": ["legacy", "t(i % 3)"]} instead (their table has no such columns)
  reflection i: id refl_%06d, content "Reflection i: prefer small commits; 反省 i",
    tags [lesson, tag(i % 4), ünï] (NULL when i % 3 == 2), embedding NULL when
    i % 4 == 3, insight_type pattern, confidence_score 0.9

Needs the `duckdb` package (pinned 1.5.x by scripts/test.sh) and, for --vss, the
`duckdb-extension-vss` package of the same version.
"""

import argparse
import gzip
import os
import shutil

import duckdb

CONVERSATIONS_V2 = """CREATE TABLE IF NOT EXISTS conversations_v2 (
    id VARCHAR PRIMARY KEY, content TEXT NOT NULL, embedding FLOAT[384], category VARCHAR,
    subcategory VARCHAR, importance_score DOUBLE, memory_tier VARCHAR, project VARCHAR,
    namespace VARCHAR, timestamp TIMESTAMP, session_id VARCHAR, user_id VARCHAR, reasoning TEXT,
    source_type VARCHAR, metadata JSON)"""
REFLECTIONS_V2 = """CREATE TABLE IF NOT EXISTS reflections_v2 (
    id VARCHAR PRIMARY KEY, content TEXT NOT NULL, embedding FLOAT[384], category VARCHAR,
    tags TEXT[], related_entities TEXT[], importance_score DOUBLE, timestamp TIMESTAMP,
    project VARCHAR, namespace VARCHAR, metadata JSON, insight_type VARCHAR, confidence_score DOUBLE)"""
CONVERSATIONS = """CREATE TABLE IF NOT EXISTS conversations (
    id VARCHAR PRIMARY KEY, content TEXT, embedding FLOAT[384], timestamp TIMESTAMP,
    project VARCHAR, metadata JSON)"""
REFLECTIONS = """CREATE TABLE IF NOT EXISTS reflections (
    id VARCHAR PRIMARY KEY, content TEXT, embedding FLOAT[384], tags VARCHAR[], timestamp TIMESTAMP)"""

VECTOR = "list_transform(range(384), lambda j: sin(i * 0.37 + j))::FLOAT[]"
CONTENT = "printf('Conversation %d about deploying the ünïcode service 🚀 on host-%d', i, i % 7)"
METADATA = """printf('{"i": %d, "lang": "en", "note": "ünï"}', i)::JSON"""
# Legacy tables have no user, session or tags columns: those live in the metadata.
LEGACY_METADATA = """printf('{"i": %d, "lang": "en", "user_id": "ann", "session_id": "s%d", "tags": ["legacy", "t%d"]}',
    i, i % 2, i % 3)::JSON"""
REFLECTION = "printf('Reflection %d: prefer small commits; 反省 %d', i, i)"
TAGS = "CASE WHEN i % 3 = 2 THEN NULL ELSE ['lesson', 'tag' || (i % 4), 'ünï'] END"


def row_parts(first, count, start, null_every):
    """The row source, timestamp and embedding expressions of `count` rows from
    `first`: a minute apart from `start`, every `null_every`-th vector NULL."""
    rows = f"FROM range({first}, {first + count}) t(i)"
    when = f"TIMESTAMP '{start}' + to_minutes(i::BIGINT)"
    embedding = f"(CASE WHEN i % {null_every} = {null_every - 1} THEN NULL ELSE {VECTOR} END)::FLOAT[384]"
    return rows, when, embedding


def conversations(con, legacy, first, count, start):
    rows, when, embedding = row_parts(first, count, start, 5)
    if legacy:
        con.execute(CONVERSATIONS)
        con.execute(f"""INSERT INTO conversations SELECT printf('conv_%06d', i), {CONTENT}, {embedding},
            {when}, 'memhub', {LEGACY_METADATA} {rows}""")
    else:
        con.execute(CONVERSATIONS_V2)
        con.execute(f"""INSERT INTO conversations_v2 SELECT printf('conv_%06d', i), {CONTENT}, {embedding},
            'dev', CASE WHEN i % 2 = 0 THEN 'deploy' END, (i % 10) / 10.0, 'long_term', 'memhub', 'default',
            {when}, 's' || (i % 3), CASE WHEN i % 2 = 0 THEN 'alice' ELSE 'bob' END, NULL, 'claude-code',
            {METADATA} {rows}""")


def reflections(con, legacy, first, count, start):
    rows, when, embedding = row_parts(first, count, start, 4)
    if legacy:
        con.execute(REFLECTIONS)
        con.execute(f"""INSERT INTO reflections SELECT printf('refl_%06d', i), {REFLECTION}, {embedding},
            {TAGS}, {when} {rows}""")
    else:
        con.execute(REFLECTIONS_V2)
        con.execute(f"""INSERT INTO reflections_v2 SELECT printf('refl_%06d', i), {REFLECTION}, {embedding},
            'process', {TAGS}, ['memhub'], 0.7, {when}, 'memhub', 'default', {METADATA}, 'pattern', 0.9 {rows}""")


def knowledge_graph(path):
    con = duckdb.connect(path)
    con.execute("""CREATE TABLE IF NOT EXISTS kg_entities (id VARCHAR PRIMARY KEY, name VARCHAR NOT NULL,
        entity_type VARCHAR NOT NULL, observations VARCHAR[], properties JSON,
        created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP, updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
        metadata JSON)""")
    con.execute("""CREATE TABLE IF NOT EXISTS kg_relationships (id VARCHAR PRIMARY KEY,
        from_entity VARCHAR NOT NULL, to_entity VARCHAR NOT NULL, relation_type VARCHAR NOT NULL,
        properties JSON, created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP, metadata JSON)""")
    con.execute("""INSERT INTO kg_entities (id, name, entity_type, observations, properties, metadata) VALUES
        ('e1', 'memhub', 'project', ['a memory hub', 'written in Rust'], '{"stars": 3}', '{"confidence": 0.9}'),
        ('e2', 'Rust', 'language', ['systems language'], '{}', '{}'),
        ('e3', 'Zürich', 'place', [], NULL, NULL)""")
    con.execute("""INSERT INTO kg_relationships (id, from_entity, to_entity, relation_type, properties, metadata)
        VALUES ('r1', 'e1', 'e2', 'written_in', '{"since": 2026}', '{}'),
               ('r2', 'e1', 'e3', 'built_in', NULL, NULL)""")
    con.close()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="reflection.duckdb to create or append to")
    p.add_argument("--conversations", type=int, default=0)
    p.add_argument("--reflections", type=int, default=0)
    p.add_argument("--first", type=int, default=0, help="row number of the first new row")
    p.add_argument("--start", default="2026-11-01 00:00:00", help="timestamp of row 0")
    p.add_argument("--legacy", action="store_true", help="legacy tables instead of the _v2 ones")
    p.add_argument("--vss", action="store_true", help="persist a vss HNSW index on each embedding column")
    p.add_argument("--set-content", nargs=2, metavar=("ID", "TEXT"), help="change one conversation's content")
    p.add_argument("--kg", help="also write this knowledge_graph.duckdb")
    p.add_argument("--gzip", action="store_true", help="gzip the files whole, keeping their names")
    a = p.parse_args()

    con = duckdb.connect(a.out)
    if a.conversations:
        conversations(con, a.legacy, a.first, a.conversations, a.start)
    if a.reflections:
        reflections(con, a.legacy, a.first, a.reflections, a.start)
    if a.set_content:
        table = "conversations" if a.legacy else "conversations_v2"
        con.execute(f"UPDATE {table} SET content = ? WHERE id = ?", [a.set_content[1], a.set_content[0]])
    if a.vss:
        import duckdb_extension_vss

        ext = os.path.join(os.path.dirname(duckdb_extension_vss.__file__), "extensions",
                           "v" + duckdb.__version__, "vss.duckdb_extension")
        con.execute(f"LOAD '{ext}'")
        con.execute("SET hnsw_enable_experimental_persistence = true")
        for table in ["conversations", "reflections"]:
            table = table if a.legacy else table + "_v2"
            con.execute(f"CREATE INDEX IF NOT EXISTS {table}_hnsw ON {table} USING HNSW (embedding) "
                        "WITH (metric = 'cosine')")
    con.execute("CHECKPOINT")
    con.close()
    if a.kg:
        knowledge_graph(a.kg)
    if a.gzip:
        for path in [a.out] + ([a.kg] if a.kg else []):
            with open(path, "rb") as src, gzip.open(path + ".gz", "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(path + ".gz", path)


if __name__ == "__main__":
    main()
