//! `memhub bench pgvector`: memhub's vector search against pgvector's HNSW on the
//! same memories in the same PostgreSQL database — the comparison a user of the
//! PostgreSQL backend will make. One engine over a fresh database stores the
//! corpus of `bench search` (clustered vectors, 100 systems, 10 projects); then the
//! same filtered queries run through memhub's indexes and as pgvector SQL over an
//! HNSW index (with pgvector 0.8's iterative scan, so a filter does not starve the
//! result), with recall@10 of each against an exact f32 scan of the same filter;
//! and, for scale, memhub's latency over an embedded store of the same memories.

use std::time::Instant;

use memhub_engine::Engine;
use memhub_postgres::sqlx;
use memhub_postgres::{PostgresConfig, PostgresStore};
use memhub_types::{MemoryFilter, NewMemory, SearchRequest, DEFAULT_TENANT};
use serde_json::json;
use sqlx::Connection;

use crate::bench::{centroids, clustered, corpus, latency, round, timed_ms, Rng};
use memhub_server::Config;

/// A filter class: its name, memhub's filter and the SQL condition (on `$2`) for query `q`.
struct FilterClass {
    name: &'static str,
    filter: fn(usize) -> MemoryFilter,
    sql: &'static str,
    value: fn(usize) -> Option<String>,
    /// Whether memory `i` passes the filter of query `q` (the exact truth's filter).
    admits: fn(usize, usize) -> bool,
}

fn classes() -> [FilterClass; 3] {
    [
        FilterClass {
            name: "none",
            filter: |_| MemoryFilter::default(),
            sql: "$2::text IS NULL",
            value: |_| None,
            admits: |_, _| true,
        },
        FilterClass {
            name: "1pct_system",
            filter: |q| MemoryFilter { system_id: Some(format!("sys-{}", q % 100)), ..Default::default() },
            sql: "system_id = $2",
            value: |q| Some(format!("sys-{}", q % 100)),
            admits: |i, q| i % 100 == q % 100,
        },
        FilterClass {
            name: "10pct_project",
            filter: |q| MemoryFilter { project: Some(format!("p{}", q % 10)), ..Default::default() },
            sql: "project = $2",
            value: |q| Some(format!("p{}", q % 10)),
            admits: |i, q| i % 10 == q % 10,
        },
    ]
}

/// `bench pgvector`.
pub fn pgvector(
    config: &Config,
    admin_url: &str,
    count: usize,
    queries: usize,
    noise: f32,
    ef_search: usize,
) -> Result<(), String> {
    let dim = config.engine.embedding_dim;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let url = memhub_postgres::create_database(admin_url, &format!("memhub_pgvector_{}", nanos % 1_000_000_000))
        .map_err(|e| e.to_string())?;
    let store = PostgresStore::connect(&PostgresConfig { url: url.clone(), ..Default::default() })
        .map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let engine =
        Engine::open_on(Box::new(store), dir.path(), config.engine.clone(), None).map_err(|e| e.to_string())?;

    // The same corpus (the same generator state) into PostgreSQL and into an
    // embedded store beside it, for memhub's own search on each.
    let generate = |engine: &Engine| {
        let mut rng = Rng(7);
        let centres = centroids(&mut rng, dim);
        let vectors = corpus(Some(engine), count, |i| NewMemory {
            system_id: Some(format!("sys-{}", i % 100)),
            project: Some(format!("p{}", i % 10)),
            memory_id: Some(format!("m{i}")),
            content: format!("memory {i}"),
            embedding: Some(clustered(&mut rng, &centres, noise)),
            ..Default::default()
        })?;
        engine.checkpoint().map_err(|e| e.to_string())?;
        Ok::<_, String>((vectors, rng, centres))
    };
    eprintln!("storing {count} memories through memhub into PostgreSQL ...");
    let started = Instant::now();
    let (vectors, mut rng, centres) = generate(&engine)?;
    let memhub_build_s = started.elapsed().as_secs_f64();
    eprintln!("storing the same memories into an embedded store ...");
    let embedded_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let embedded = Engine::open(embedded_dir.path(), config.engine.clone(), memhub_engine::OpenMode::ReadWrite)
        .map_err(|e| e.to_string())?;
    generate(&embedded)?;

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let mut sql = runtime.block_on(sqlx::PgConnection::connect(&url)).map_err(|e| e.to_string())?;
    let column: String = runtime
        .block_on(
            sqlx::query_scalar(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
                 WHERE attrelid = 'memories'::regclass AND attname = 'embedding'",
            )
            .fetch_one(&mut sql),
        )
        .map_err(|e| e.to_string())?;
    if column != "vector" {
        return Err(format!("memories.embedding is {column}, not pgvector's vector: is the extension installed?"));
    }
    eprintln!("building pgvector's HNSW index (m 16, ef_construction 64, cosine) ...");
    // As pgvector's docs advise: the graph must fit in maintenance_work_mem, or the
    // build slows down several times.
    runtime.block_on(sqlx::raw_sql("SET maintenance_work_mem = '2GB'").execute(&mut sql)).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let index = format!(
        "CREATE INDEX memories_embedding_hnsw ON memories USING hnsw ((embedding::vector({dim})) vector_cosine_ops)"
    );
    runtime.block_on(sqlx::raw_sql(sqlx::AssertSqlSafe(index)).execute(&mut sql)).map_err(|e| e.to_string())?;
    let pgvector_build_s = started.elapsed().as_secs_f64();
    let settings =
        format!("SET hnsw.iterative_scan = relaxed_order; SET hnsw.ef_search = {ef_search}; ANALYZE memories");
    runtime.block_on(sqlx::raw_sql(sqlx::AssertSqlSafe(settings)).execute(&mut sql)).map_err(|e| e.to_string())?;
    let query_sql = |class: &FilterClass| {
        format!(
            "SELECT memory_id FROM memories WHERE tenant = 'default' AND {} \
             ORDER BY embedding::vector({dim}) <=> $1::real[]::vector({dim}) LIMIT 10",
            class.sql
        )
    };
    // Whether the planner uses the HNSW index for each class (it may not for a
    // selective filter, where a scan of the filtered rows is cheaper).
    let mut plans = serde_json::Map::new();
    for class in &classes() {
        let explain = format!("EXPLAIN {}", query_sql(class));
        let zero = vec![0f32; dim];
        let lines: Vec<String> = runtime
            .block_on(
                sqlx::query_scalar(sqlx::AssertSqlSafe(explain)).bind(zero).bind((class.value)(0)).fetch_all(&mut sql),
            )
            .map_err(|e| e.to_string())?;
        plans.insert(class.name.into(), json!(lines.iter().any(|l| l.contains("memories_embedding_hnsw"))));
    }

    let index_of = |memory_id: &str| memory_id.trim_start_matches('m').parse::<usize>().ok();
    let exact = |q: &[f32], class: &FilterClass, qn: usize| -> Vec<usize> {
        let mut scored: Vec<(usize, f32)> = (0..count)
            .filter(|&i| (class.admits)(i, qn))
            .map(|i| (i, vectors[i * dim..(i + 1) * dim].iter().zip(q).map(|(a, b)| a * b).sum::<f32>()))
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1));
        scored.into_iter().take(10).map(|s| s.0).collect()
    };
    let mut report = serde_json::Map::new();
    for class in &classes() {
        let requests: Vec<SearchRequest> = (0..queries)
            .map(|q| SearchRequest {
                query: String::new(),
                query_embedding: Some(clustered(&mut rng, &centres, noise)),
                semantic_ratio: Some(1.0),
                limit: Some(10),
                filter: (class.filter)(q),
                ..Default::default()
            })
            .collect();
        let text = query_sql(class);
        let (mut memhub_ms, mut pg_ms, mut embedded_ms) = (Vec::new(), Vec::new(), Vec::new());
        let (mut memhub_hits, mut pg_hits, mut wanted) = (0usize, 0usize, 0usize);
        for (q, req) in requests.iter().enumerate() {
            let qv = req.query_embedding.clone().unwrap_or_default();
            let mut found = Vec::new();
            timed_ms(&mut memhub_ms, || {
                found = engine.search(&DEFAULT_TENANT.into(), req).map(|r| r.results).unwrap_or_default();
            });
            let ours: Vec<usize> = found.iter().filter_map(|h| index_of(&h.memory.memory_id)).collect();
            timed_ms(&mut embedded_ms, || drop(embedded.search(&DEFAULT_TENANT.into(), req)));
            let mut theirs = Vec::new();
            let mut failed = None;
            timed_ms(&mut pg_ms, || {
                match runtime.block_on(
                    sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(text.clone()))
                        .bind(qv.clone())
                        .bind((class.value)(q))
                        .fetch_all(&mut sql),
                ) {
                    Ok(rows) => theirs = rows,
                    Err(e) => failed = Some(e.to_string()),
                }
            });
            if let Some(e) = failed {
                return Err(format!("pgvector query: {e}"));
            }
            let theirs: Vec<usize> = theirs.iter().filter_map(|id| index_of(id)).collect();
            let truth = exact(&qv, class, q);
            memhub_hits += truth.iter().filter(|t| ours.contains(t)).count();
            pg_hits += truth.iter().filter(|t| theirs.contains(t)).count();
            wanted += truth.len();
        }
        // The same queries again: an agent asking again finds its hits kept (on
        // PostgreSQL, the replica's hit cache; the first pass read every hit).
        let mut repeated_ms = Vec::new();
        for req in &requests {
            timed_ms(&mut repeated_ms, || drop(engine.search(&DEFAULT_TENANT.into(), req)));
        }
        let recall = |hits: usize| round(hits as f64 / wanted.max(1) as f64);
        report.insert(
            format!("filter_{}", class.name),
            json!({
                "memhub": {"latency_ms": latency(memhub_ms), "recall_at_10": recall(memhub_hits)},
                "memhub_embedded_same_corpus": {"latency_ms": latency(embedded_ms)},
                "memhub_same_queries_again": {"latency_ms": latency(repeated_ms)},
                "pgvector_hnsw": {"latency_ms": latency(pg_ms), "recall_at_10": recall(pg_hits),
                                  "planner_used_hnsw": plans[class.name]},
            }),
        );
    }
    let out = json!({
        "bench": "pgvector",
        "memories": count, "queries_per_filter": queries, "dim": dim, "noise": noise,
        "pgvector_ef_search": ef_search,
        "memhub_store_and_index_seconds": round(memhub_build_s),
        "pgvector_hnsw_build_seconds": round(pgvector_build_s),
        "note": "memhub: vector-only search in process over the PostgreSQL store (its own HNSW; the hits' \
                 memories read from the database); memhub_embedded_same_corpus: the same queries over an \
                 embedded store of the same memories; pgvector: the same query as SQL over one loopback \
                 connection, iterative scan relaxed_order",
        "filters": report,
    });
    println!("{}", serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?);
    Ok(())
}
