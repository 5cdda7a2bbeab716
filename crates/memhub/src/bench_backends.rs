//! `memhub bench backends`: the embedded store and the PostgreSQL backend side by
//! side, in fresh server processes, in alternating rounds: ingest, single-store
//! latency and search latency on each; then, on PostgreSQL, a second replica:
//! how long a fresh one takes to build its indexes from the database, its search
//! latency, how fast it applies another replica's writes, and search throughput
//! of one replica against two.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::bench::{
    batch_bodies, bench_env, load, median, percentile, round, single_bodies, Rng, ServerProcess, Vocabulary,
};
use memhub_server::Config;

/// One round's figures of one backend.
#[derive(Default, Clone)]
struct Side {
    ingest_per_second: f64,
    single_per_second: f64,
    single_p50: f64,
    single_p99: f64,
    search_p50: f64,
    search_p99: f64,
}

/// The server environment for `backend`: a fresh database of the cluster at
/// `admin_url` for PostgreSQL.
fn backend_env(backend: &str, admin_url: &str, round: usize) -> Result<Vec<(String, String)>, String> {
    let mut env = bench_env(&[]);
    if backend == "postgres" {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let name = format!("memhub_bench_{round}_{}", nanos % 1_000_000_000);
        let url = memhub_postgres::create_database(admin_url, &name).map_err(|e| e.to_string())?;
        env.push(("MEMHUB_STORAGE_BACKEND".into(), "postgres".into()));
        env.push(("MEMHUB_POSTGRES_URL".into(), url));
    }
    Ok(env)
}

/// Search bodies: keyword queries of three words of `vocabulary`.
fn searches(vocabulary: &Vocabulary, rng: &mut Rng, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|_| {
            let body = json!({"query": vocabulary.text(rng, 3), "semantic_ratio": 0, "limit": 10});
            serde_json::to_vec(&body).expect("serializes")
        })
        .collect()
}

/// Batches (500 each) of `count` memories numbered from `first`, with text from `vocabulary`.
fn corpus(vocabulary: &Vocabulary, first: usize, count: usize, dim: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng(0xC0FF ^ first as u64);
    batch_bodies(first, count, 500, dim)
        .into_iter()
        .map(|body| {
            let mut batch: Value = serde_json::from_slice(&body).expect("our own JSON");
            for m in batch["memories"].as_array_mut().expect("a batch") {
                m["content"] = json!(vocabulary.text(&mut rng, 20));
            }
            serde_json::to_vec(&batch).expect("serializes")
        })
        .collect()
}

async fn applied(client: &reqwest::Client, base: &str) -> Result<(i64, i64), String> {
    let health: Value = client
        .get(format!("{base}/health"))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    Ok((health["applied_seq"].as_i64().unwrap_or(0), health["log_seq"].as_i64().unwrap_or(0)))
}

/// Wait until the server's indexes hold every change (nothing pending).
async fn drained(client: &reqwest::Client, base: &str) -> Result<(), String> {
    let started = Instant::now();
    loop {
        // A failed poll (a pooled connection the server closed) is tried again.
        let stats: Value = match client.get(format!("{base}/v1/stats")).send().await {
            Ok(resp) => resp.json().await.unwrap_or_default(),
            Err(_) => Value::Null,
        };
        if stats["index"]["pending_text"] == 0 && stats["index"]["pending_vectors"] == 0 {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(600) {
            return Err(format!("the indexes did not drain: {}", stats["index"]));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `bench backends`.
pub async fn backends(
    config: &Config,
    admin_url: &str,
    count: usize,
    singles: usize,
    clients: usize,
    queries: usize,
    rounds: usize,
) -> Result<(), String> {
    let dim = config.engine.embedding_dim;
    let client = reqwest::Client::new();
    let vocabulary = Vocabulary::new(20_000);
    let mut rng = Rng(0xBAC4);
    eprintln!("generating {count} batched and {singles} single memories, {queries} searches ...");
    let batches = corpus(&vocabulary, 0, count, dim);
    let more = corpus(&vocabulary, count + singles, count / 5, dim);
    let single = single_bodies(count, singles, dim);
    let search = searches(&vocabulary, &mut rng, queries);
    let mut sides: [Vec<Side>; 2] = [Vec::new(), Vec::new()];
    let mut replica_rounds = Vec::new();
    for pass in 0..rounds.max(1) {
        let order = if pass % 2 == 0 { [0, 1] } else { [1, 0] };
        for mode in order {
            let backend = ["sqlite", "postgres"][mode];
            let env = backend_env(backend, admin_url, pass)?;
            let server = ServerProcess::start_with(config, env.clone(), |_| Ok(()))?;
            let t = Instant::now();
            load(&client, &format!("{}/v1/memories/batch", server.base), None, batches.clone(), 2).await?;
            let ingest_per_second = count as f64 / t.elapsed().as_secs_f64();
            // Single stores start on drained indexes: otherwise they share the cores with
            // the ingest's index backlog, and a faster ingest would read as slower stores.
            drained(&client, &server.base).await?;
            let t = Instant::now();
            let single_ms =
                load(&client, &format!("{}/v1/memories", server.base), None, single.clone(), clients).await?;
            let single_per_second = singles as f64 / t.elapsed().as_secs_f64();
            // Both backends search the same state: every change in the persisted indexes.
            drained(&client, &server.base).await?;
            let search_url = format!("{}/v1/search", server.base);
            let ms = load(&client, &search_url, None, search.clone(), 1).await?;
            let side = Side {
                ingest_per_second,
                single_per_second,
                single_p50: percentile(&single_ms, 0.5),
                single_p99: percentile(&single_ms, 0.99),
                search_p50: percentile(&ms, 0.5),
                search_p99: percentile(&ms, 0.99),
            };
            eprintln!(
                "round {pass} {backend}: ingest {:.0}/s, single {:.0}/s (p50 {:.2} p99 {:.2} ms), search p50 {:.2} p99 {:.2} ms",
                side.ingest_per_second, side.single_per_second, side.single_p50, side.single_p99, side.search_p50, side.search_p99
            );
            sides[mode].push(side);
            if backend == "postgres" {
                replica_rounds.push(replica(&client, config, &server, env, &search, &more, clients).await?);
            }
        }
    }
    let med = |mode: usize, f: fn(&Side) -> f64| round(median(sides[mode].iter().map(f).collect()));
    let side = |mode: usize| {
        json!({
            "ingest_memories_per_second": med(mode, |s| s.ingest_per_second).round(),
            "single_stores_per_second": med(mode, |s| s.single_per_second).round(),
            "single_ms_p50": med(mode, |s| s.single_p50), "single_ms_p99": med(mode, |s| s.single_p99),
            "search_ms_p50": med(mode, |s| s.search_p50), "search_ms_p99": med(mode, |s| s.search_p99),
        })
    };
    let of = |key: &str| round(median(replica_rounds.iter().filter_map(|r: &Value| r[key].as_f64()).collect()));
    let report = json!({
        "bench": "backends",
        "memories": count, "singles": singles, "single_clients": clients, "searches": queries, "rounds": rounds,
        "embedded": side(0),
        "postgres": side(1),
        "postgres_over_embedded": {
            "ingest": round(med(1, |s| s.ingest_per_second) / med(0, |s| s.ingest_per_second)),
            "single_p99": round(med(1, |s| s.single_p99) / med(0, |s| s.single_p99)),
            "search_p50": round(med(1, |s| s.search_p50) / med(0, |s| s.search_p50)),
        },
        "second_replica": {
            "fresh_ready_seconds": of("fresh_ready_seconds"),
            "search_ms_p50": of("search_ms_p50"),
            "search_ms_p99": of("search_ms_p99"),
            "applies_changes_per_second": of("applies_changes_per_second").round(),
            "caught_up_after_last_write_ms": of("caught_up_after_last_write_ms"),
            "searches_per_second_one_replica": of("searches_per_second_one_replica").round(),
            "searches_per_second_two_replicas": of("searches_per_second_two_replicas").round(),
        },
        "runs": replica_rounds,
    });
    println!("{}", serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?);
    Ok(())
}

/// A second replica beside `first` (which holds the corpus).
async fn replica(
    client: &reqwest::Client,
    config: &Config,
    first: &ServerProcess,
    env: Vec<(String, String)>,
    search: &[Vec<u8>],
    more: &[Vec<u8>],
    clients: usize,
) -> Result<Value, String> {
    let t = Instant::now();
    let second = ServerProcess::start_with(config, env, |_| Ok(()))?;
    let fresh_ready_seconds = t.elapsed().as_secs_f64();
    drained(client, &second.base).await?;
    let ms = load(client, &format!("{}/v1/search", second.base), None, search.to_vec(), 1).await?;
    // Catch-up: the first replica ingests more while the second follows.
    let (start, _) = applied(client, &second.base).await?;
    let t = Instant::now();
    load(client, &format!("{}/v1/memories/batch", first.base), None, more.to_vec(), 2).await?;
    let written = t.elapsed();
    let (_, target) = applied(client, &first.base).await?;
    loop {
        let (now, _) = applied(client, &second.base).await?;
        if now >= target {
            break;
        }
        if t.elapsed() > Duration::from_secs(300) {
            return Err(format!("the second replica did not catch up: {now} of {target}"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let caught_up = t.elapsed();
    // Throughput: the same searches, `clients` at once, on one replica, then split over two.
    let many: Vec<Vec<u8>> = search.iter().cycle().take(search.len() * 4).cloned().collect();
    let t = Instant::now();
    load(client, &format!("{}/v1/search", first.base), None, many.clone(), clients).await?;
    let one = many.len() as f64 / t.elapsed().as_secs_f64();
    let (a, b) = many.split_at(many.len() / 2);
    let t = Instant::now();
    let (url_a, url_b) = (format!("{}/v1/search", first.base), format!("{}/v1/search", second.base));
    let (ra, rb) = tokio::join!(
        load(client, &url_a, None, a.to_vec(), clients.div_ceil(2)),
        load(client, &url_b, None, b.to_vec(), clients.div_ceil(2)),
    );
    ra?;
    rb?;
    let two = many.len() as f64 / t.elapsed().as_secs_f64();
    let run = json!({
        "fresh_ready_seconds": round(fresh_ready_seconds),
        "search_ms_p50": round(percentile(&ms, 0.5)),
        "search_ms_p99": round(percentile(&ms, 0.99)),
        "applies_changes_per_second": ((target - start) as f64 / caught_up.as_secs_f64()).round(),
        "caught_up_after_last_write_ms": round((caught_up - written).as_secs_f64() * 1000.0),
        "searches_per_second_one_replica": one.round(),
        "searches_per_second_two_replicas": two.round(),
    });
    eprintln!("second replica: {run}");
    Ok(run)
}
