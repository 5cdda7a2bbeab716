//! `memhub bench ...`: benchmarks that print numbers. Targets are checked here, by
//! people reading the output, never in timed unit tests.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Subcommand;
use memhub_server::Config;
use serde_json::{json, Value};

#[derive(Subcommand)]
pub enum Which {
    /// Ingest through `POST /v1/memories/batch` and single `store_memory` calls into a
    /// fresh server process over loopback.
    Ingest {
        /// Memories to ingest in batches.
        #[arg(long, default_value_t = 100_000)]
        count: usize,
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// Concurrent batch requests in flight.
        #[arg(long, default_value_t = 2)]
        concurrency: usize,
        /// Single `store_memory` calls timed one at a time.
        #[arg(long, default_value_t = 1000)]
        singles: usize,
    },
    /// Group commit, in fresh server processes (open mode, rate limit off), with
    /// `engine.group_commit` off and on in alternating rounds: `singles` single
    /// `POST /v1/memories` from `clients` connections at once, then `count` memories
    /// in batches of 1000 (2 in flight).
    Writes {
        #[arg(long, default_value_t = 64)]
        clients: usize,
        #[arg(long, default_value_t = 20_000)]
        singles: usize,
        #[arg(long, default_value_t = 50_000)]
        count: usize,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// The change feed, in fresh server processes: batched ingest (`count` memories,
    /// batches of 1000, 2 in flight) with no consumer and with one SSE consumer and one
    /// webhook receiver attached, in alternating rounds; then `subscribers` SSE streams
    /// while `clients` connections store `singles` single memories at full speed, and
    /// the lag of every event from the change's commit to its arrival.
    Feed {
        #[arg(long, default_value_t = 50_000)]
        count: usize,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long, default_value_t = 100)]
        subscribers: usize,
        #[arg(long, default_value_t = 64)]
        clients: usize,
        #[arg(long, default_value_t = 20_000)]
        singles: usize,
    },
    /// Search latency over a synthetic corpus (in process): hybrid search with and
    /// without a 1%-selective filter, with clustered 384-d vectors.
    Search {
        /// Memories in the corpus.
        #[arg(long, default_value_t = 100_000)]
        count: usize,
        /// Queries per measurement.
        #[arg(long, default_value_t = 500)]
        queries: usize,
        /// Per-dimension noise around the 200 cluster centres (uniform ±noise before
        /// normalising): 0.06 puts members of a cluster at cosine ~0.7, like
        /// sentence embeddings of one topic; 0.35 is close to uniform noise.
        #[arg(long, default_value_t = 0.06)]
        noise: f32,
        /// HNSW search breadths to sweep for unfiltered vector-only recall and latency.
        #[arg(long, value_delimiter = ',', default_value = "64,128,256,512")]
        ef_sweep: Vec<usize>,
        /// Keep the corpus in this data dir (default: a temporary one). A dir that
        /// already holds this benchmark's corpus of `--count` memories is searched
        /// as it is: a 1M build takes ~15 minutes, the searches a minute.
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
    },
    /// (Used by `bench search`.) Open a data dir, run searches, print resident memory.
    #[command(hide = true)]
    SearchProbe {
        #[arg(long)]
        dir: std::path::PathBuf,
        #[arg(long, default_value_t = 200)]
        queries: usize,
        /// Run `bench search`'s hybrid queries instead (for profiling).
        #[arg(long)]
        hybrid: bool,
        /// With `--hybrid`: its 1%-selective system filter too.
        #[arg(long, requires = "hybrid")]
        filtered: bool,
    },
    /// What authentication and the audit log cost: the same ingest and search load
    /// against a server in open mode without audit, and one that requires an API key
    /// and audits every request (alternating rounds; medians and ratios).
    Auth {
        /// Memories ingested per round (batches of 500).
        #[arg(long, default_value_t = 20_000)]
        count: usize,
        /// Searches per round.
        #[arg(long, default_value_t = 2000)]
        queries: usize,
        /// Requests in flight.
        #[arg(long, default_value_t = 2)]
        concurrency: usize,
        /// Rounds per mode.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Sentences per second of the local encoder at several batch sizes.
    Embed {
        /// Sentences encoded per measurement.
        #[arg(long, default_value_t = 256)]
        sentences: usize,
        /// Fewest words in a generated sentence.
        #[arg(long, default_value_t = 8)]
        min_words: usize,
        /// Most words in a generated sentence.
        #[arg(long, default_value_t = 24)]
        max_words: usize,
    },
    /// Evidence recall@1/5/10 on LoCoMo for dense-only, BM25-only and hybrid search.
    Locomo {
        /// The LoCoMo folder (NN.json files).
        #[arg(long)]
        data: std::path::PathBuf,
        /// What each memory's indexed text holds besides the turn itself.
        #[arg(long, value_enum, default_value_t = LocomoText::Speaker)]
        text: LocomoText,
    },
    /// Tiers (in process): vector and hybrid search over the same corpus when every
    /// memory is hot, then warm (int8 graph), with recall@10 against an exact f32
    /// scan; then cold (Parquet in a local bucket) with a 7-day time filter.
    Tiers {
        /// Memories in the corpus (created over the last 365 days, 10 systems).
        #[arg(long, default_value_t = 100_000)]
        count: usize,
        /// Queries per measurement.
        #[arg(long, default_value_t = 300)]
        queries: usize,
        #[arg(long, default_value_t = 0.06)]
        noise: f32,
        /// Measure only the cold tier: the corpus goes through the real aging job
        /// (hot -> warm -> Parquet), but is stored with a vector model the hot and
        /// warm graphs do not serve, so no graph is built only to be thrown away
        /// (at 1M that is most of an hour on 2 cores). The cold files are the same.
        #[arg(long)]
        cold_only: bool,
    },
    /// Pull ingestion of a Session-Buddy `reflection.duckdb` (in process): the file,
    /// gzip-compressed, in a local bucket; one poll of the worker ingests it into a
    /// fresh store. Reports rows/s, the DuckDB read alone, an unchanged re-upload,
    /// and peak resident memory. Make a file with
    /// `scripts/duckdb-fixture.py --out F --conversations 70000 --reflections 30000`.
    Pull {
        /// The reflection.duckdb to ingest.
        #[arg(long)]
        db: std::path::PathBuf,
    },
    /// The embedded store against the PostgreSQL backend, in fresh server processes
    /// and alternating rounds: batched ingest, single stores from `clients`
    /// connections, keyword search latency; then on PostgreSQL a second replica: its
    /// start from an empty data dir, its search latency, how fast it applies the
    /// first one's writes, and search throughput on one replica against two.
    Backends {
        /// A PostgreSQL database to create the benchmark's databases from (e.g.
        /// `postgres://memhub@127.0.0.1:5432/postgres`); each round gets a fresh one.
        #[arg(long, env = "MEMHUB_BENCH_POSTGRES_URL")]
        postgres_url: String,
        #[arg(long, default_value_t = 100_000)]
        count: usize,
        #[arg(long, default_value_t = 5_000)]
        singles: usize,
        #[arg(long, default_value_t = 16)]
        clients: usize,
        #[arg(long, default_value_t = 500)]
        queries: usize,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// memhub's vector search against pgvector's HNSW on the same memories in one
    /// PostgreSQL database (in process): the `search` corpus stored through memhub,
    /// then the same filtered queries (none, 1%, 10%) through memhub's indexes and as
    /// pgvector SQL with iterative scan, with recall@10 of each against exact.
    Pgvector {
        /// A PostgreSQL database with pgvector to create the benchmark's database from.
        #[arg(long, env = "MEMHUB_BENCH_POSTGRES_URL")]
        postgres_url: String,
        #[arg(long, default_value_t = 100_000)]
        count: usize,
        /// Queries per filter class.
        #[arg(long, default_value_t = 200)]
        queries: usize,
        #[arg(long, default_value_t = 0.06)]
        noise: f32,
        /// pgvector's `hnsw.ef_search` (its default is 40; memhub asks its graph for
        /// 100 candidates for a limit-10 search).
        #[arg(long, default_value_t = 100)]
        ef_search: usize,
    },
}

/// The indexed text of a LoCoMo turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LocomoText {
    /// The turn's text only (no speaker, no photo caption).
    Plain,
    /// `Speaker: text` (plus the shared photo's caption, if any).
    Speaker,
    /// `Speaker (session date): text` (plus the caption).
    SpeakerDate,
}

/// A small deterministic generator (xorshift64*), so runs are comparable.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

const WORDS: &[&str] = &[
    "deploy",
    "release",
    "bug",
    "customer",
    "invoice",
    "latency",
    "database",
    "migration",
    "meeting",
    "roadmap",
    "incident",
    "pager",
    "cache",
    "index",
    "search",
    "agent",
    "memory",
    "review",
    "budget",
    "hiring",
];

fn memory_json(rng: &mut Rng, i: usize, dim: usize) -> Value {
    let text: Vec<&str> = (0..12).map(|_| WORDS[(rng.next() % WORDS.len() as u64) as usize]).collect();
    let v: Vec<f32> = (0..dim).map(|_| rng.unit()).collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let v: Vec<f64> = v.iter().map(|x| ((x / norm) as f64 * 1e6).round() / 1e6).collect();
    json!({
        "system_id": format!("bench-{}", i % 8),
        "memory_id": format!("m{i}"),
        "content": format!("memory {i}: {}", text.join(" ")),
        "tags": [WORDS[i % WORDS.len()]],
        "embedding": v,
    })
}

/// Three decimals, for reports.
pub(crate) fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn rss_kib(pid: u32) -> Option<u64> {
    proc_status_kib(&pid.to_string(), "VmRSS:")
}

/// A line of `/proc/<pid>/status` in KiB (`VmRSS:`, `VmHWM:` = peak); `pid` may be `self`.
fn proc_status_kib(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()
}

pub(crate) struct ServerProcess {
    child: Child,
    port: u16,
    pub(crate) base: String,
    dir: tempfile::TempDir,
    dim: usize,
    env: Vec<(String, String)>,
}

impl ServerProcess {
    /// Start `memhub serve` on a fresh data dir and a free port.
    fn start(config: &Config) -> Result<ServerProcess, String> {
        Self::start_with(config, Vec::new(), |_| Ok(()))
    }

    /// Like [`start`](Self::start), with extra environment and a set-up step on the
    /// data dir before the server opens it.
    pub(crate) fn start_with(
        config: &Config,
        env: Vec<(String, String)>,
        prepare: impl FnOnce(&std::path::Path) -> Result<(), String>,
    ) -> Result<ServerProcess, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        prepare(dir.path())?;
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
        let dim = config.engine.embedding_dim;
        let child = Self::spawn(dir.path(), port, dim, &env)?;
        let server = ServerProcess { child, port, base: format!("http://127.0.0.1:{port}"), dir, dim, env };
        server.wait_ready()?;
        Ok(server)
    }

    /// Runs this binary's `serve`, or `MEMHUB_BENCH_SERVER`'s: another build under
    /// the same load generator, so two servers are compared with one client.
    fn spawn(dir: &std::path::Path, port: u16, dim: usize, env: &[(String, String)]) -> Result<Child, String> {
        let exe = match std::env::var_os("MEMHUB_BENCH_SERVER") {
            Some(exe) => std::path::PathBuf::from(exe),
            None => std::env::current_exe().map_err(|e| e.to_string())?,
        };
        Command::new(exe)
            .args(["serve", "--addr", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(dir)
            .env("MEMHUB_LOG", "warn")
            .env("MEMHUB_EMBEDDING_DIM", dim.to_string())
            .env("MEMHUB_EMBEDDER", "none")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start the server: {e}"))
    }

    fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(300);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err("the server did not start within 300 s".into())
    }

    fn stop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stop gracefully, start again on the same data dir; seconds until it listens
    /// (the index is rebuilt from the store before the listener opens).
    fn restart(&mut self) -> Result<f64, String> {
        self.stop();
        let t = Instant::now();
        self.child = Self::spawn(self.dir.path(), self.port, self.dim, &self.env)?;
        self.wait_ready()?;
        Ok(t.elapsed().as_secs_f64())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn run(which: Which, config: &Config) -> Result<(), String> {
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    match which {
        Which::Ingest { count, batch, concurrency, singles } => {
            rt.block_on(ingest(config, count, batch, concurrency, singles))
        }
        Which::Writes { clients, singles, count, rounds } => {
            rt.block_on(writes(config, clients, singles, count, rounds))
        }
        Which::Feed { count, rounds, subscribers, clients, singles } => {
            rt.block_on(feed(config, count, rounds, subscribers, clients, singles))
        }
        Which::Auth { count, queries, concurrency, rounds } => {
            rt.block_on(auth(config, count, queries, concurrency, rounds))
        }
        Which::Embed { sentences, min_words, max_words } => embed(config, sentences, min_words, max_words),
        Which::Search { count, queries, noise, ef_sweep, data_dir } => {
            search(config, count, queries, noise, &ef_sweep, data_dir.as_deref())
        }
        Which::SearchProbe { dir, queries, hybrid, filtered } => search_probe(config, &dir, queries, hybrid, filtered),
        Which::Locomo { data, text } => locomo(config, &data, text),
        Which::Tiers { count, queries, noise, cold_only } => tiers(config, count, queries, noise, cold_only),
        Which::Pull { db } => rt.block_on(pull(config, &db)),
        Which::Backends { postgres_url, count, singles, clients, queries, rounds } => rt
            .block_on(crate::bench_backends::backends(config, &postgres_url, count, singles, clients, queries, rounds)),
        Which::Pgvector { postgres_url, count, queries, noise, ef_search } => {
            crate::bench_pgvector::pgvector(config, &postgres_url, count, queries, noise, ef_search)
        }
    }
}

#[cfg(not(feature = "duckdb"))]
async fn pull(_: &Config, _: &std::path::Path) -> Result<(), String> {
    Err("bench pull reads DuckDB files: build with --features duckdb (see the README)".into())
}

/// `bench pull`: see [`Which::Pull`].
#[cfg(feature = "duckdb")]
async fn pull(config: &Config, db: &std::path::Path) -> Result<(), String> {
    use memhub_engine::{Engine, OpenMode};
    use memhub_ingest::{IngestConfig, PullWorker};
    use memhub_objects::BucketConfig;
    use std::sync::Arc;

    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (data, bucket) = (dir.path().join("data"), dir.path().join("bucket"));
    let key = bucket.join("systems/bench-host/reflection.duckdb");
    std::fs::create_dir_all(key.parent().expect("has a parent")).map_err(|e| e.to_string())?;
    let db_bytes = std::fs::metadata(db).map_err(|e| format!("{}: {e}", db.display()))?.len();

    // The DuckDB read alone (no writes).
    let started = Instant::now();
    let dim = config.engine.embedding_dim;
    let read = memhub_ingest::duckdb::read_reflection(db, "bench-host", dim, 500, |_| Ok(()))?;
    let read_seconds = started.elapsed().as_secs_f64();

    let (gz_bytes, _) = crate::sync::gzip_file(db, &key)?;

    let engine = Arc::new(Engine::open(&data, config.engine.clone(), OpenMode::ReadWrite).map_err(|e| e.to_string())?);
    let ingest = IngestConfig {
        bucket: Some(BucketConfig { url: format!("file://{}", bucket.display()), ..Default::default() }),
        ..Default::default()
    };
    let worker = PullWorker::open(engine.clone(), ingest, &data)?.expect("a bucket is configured");
    let rss_before = proc_status_kib("self", "VmRSS:").unwrap_or(0);
    let started = Instant::now();
    let report = worker.poll().await;
    let seconds = started.elapsed().as_secs_f64();
    let peak = proc_status_kib("self", "VmHWM:").unwrap_or(0);
    if report.failed > 0 || report.rows_written == 0 {
        return Err(format!("the ingest failed: {report:?} {:?}", worker.status().map(|s| s.uploads)));
    }
    // The same data uploaded again (a new object): read, compared, nothing written.
    crate::sync::gzip_file(db, &key)?;
    let started = Instant::now();
    let again = worker.poll().await;
    let again_seconds = started.elapsed().as_secs_f64();
    engine.checkpoint().map_err(|e| e.to_string())?;

    let out = json!({
        "bench": "pull",
        "file_mb": round(db_bytes as f64 / 1048576.0),
        "gzip_mb": round(gz_bytes as f64 / 1048576.0),
        "rows": read,
        "duckdb_read_rows_per_s": (read as f64 / read_seconds).round(),
        "ingest_seconds": round(seconds),
        "ingest_rows_per_s": (report.rows_written as f64 / seconds).round(),
        "rows_written": report.rows_written,
        "reupload_unchanged_seconds": round(again_seconds),
        "reupload_rows_written": again.rows_written,
        "rss_before_mb": round(rss_before as f64 / 1024.0),
        "peak_rss_mb": round(peak as f64 / 1024.0),
    });
    println!("{}", serde_json::to_string_pretty(&out).expect("serializes"));
    Ok(())
}

async fn ingest(config: &Config, count: usize, batch: usize, concurrency: usize, singles: usize) -> Result<(), String> {
    let dim = config.engine.embedding_dim;
    let mut server = ServerProcess::start(config)?;
    let client = reqwest::Client::new();
    eprintln!("generating {count} memories with {dim}-d vectors ...");
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let bodies: Vec<Vec<u8>> = (0..count)
        .collect::<Vec<_>>()
        .chunks(batch.max(1))
        .map(|ids| {
            let memories: Vec<Value> = ids.iter().map(|&i| memory_json(&mut rng, i, dim)).collect();
            serde_json::to_vec(&json!({ "memories": memories })).expect("serializes")
        })
        .collect();
    let bytes: usize = bodies.iter().map(Vec::len).sum();
    eprintln!(
        "sending {} batches ({:.0} MiB of JSON), {concurrency} in flight ...",
        bodies.len(),
        bytes as f64 / 1048576.0
    );

    let url = format!("{}/v1/memories/batch", server.base);
    let started = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    for b in bodies {
        tx.send(b).expect("queue");
    }
    drop(tx);
    let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (client, url, rx) = (client.clone(), url.clone(), rx.clone());
        workers.push(tokio::spawn(async move {
            let mut times = Vec::new();
            loop {
                let body = match rx.lock().expect("queue").recv() {
                    Ok(b) => b,
                    Err(_) => break,
                };
                let t = Instant::now();
                let resp = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                let status = resp.status();
                let v: Value = resp.json().await.map_err(|e| e.to_string())?;
                if !status.is_success() || v["failed"] != 0 {
                    return Err(format!("batch failed: {status} {v}"));
                }
                times.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            Ok::<_, String>(times)
        }));
    }
    let mut batch_ms = Vec::new();
    for w in workers {
        batch_ms.extend(w.await.map_err(|e| e.to_string())??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    batch_ms.sort_by(f64::total_cmp);

    let mut single_ms = Vec::with_capacity(singles);
    let mcp = format!("{}/mcp", server.base);
    for i in 0..singles {
        let m = memory_json(&mut rng, count + i, dim);
        let body = json!({"method": "tools/call", "params": {"name": "store_memory", "arguments": {
            "memory_id": format!("single-{i}"), "text": m["content"], "embedding": m["embedding"],
            "metadata": {"source": "bench-single", "type": "session_memory"}}}});
        let t = Instant::now();
        let v: Value = client
            .post(&mcp)
            .json(&body)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        single_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        if v["status"] != "stored" {
            return Err(format!("store_memory failed: {v}"));
        }
    }
    single_ms.sort_by(f64::total_cmp);
    let rss = rss_kib(server.child.id());
    let stats: Value = client
        .get(format!("{}/v1/stats", server.base))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;

    let restart_seconds = server.restart()?;
    let rss_after_restart = rss_kib(server.child.id());

    let report = json!({
        "memories": count,
        "batch_size": batch,
        "concurrency": concurrency,
        "seconds": (elapsed * 1000.0).round() / 1000.0,
        "memories_per_second": (count as f64 / elapsed).round(),
        "batch_ms_p50": percentile(&batch_ms, 0.5),
        "batch_ms_p99": percentile(&batch_ms, 0.99),
        "single_store_memory_ms_p50": percentile(&single_ms, 0.5),
        "single_store_memory_ms_p99": percentile(&single_ms, 0.99),
        "server_rss_mib_after_load": rss.map(|k| (k as f64 / 1024.0 * 10.0).round() / 10.0),
        "store_bytes": stats["store_bytes"],
        "restart_seconds_with_index_rebuild": (restart_seconds * 1000.0).round() / 1000.0,
        "server_rss_mib_after_restart": rss_after_restart.map(|k| (k as f64 / 1024.0 * 10.0).round() / 10.0),
        "stored": stats["memories"],
    });
    println!("{}", serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?);
    Ok(())
}

/// Send `bodies` to `url` with `concurrency` in flight; returns each request's milliseconds.
pub(crate) async fn load(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    bodies: Vec<Vec<u8>>,
    concurrency: usize,
) -> Result<Vec<f64>, String> {
    let queue = std::sync::Arc::new(std::sync::Mutex::new(bodies.into_iter()));
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (client, url, queue, token) = (client.clone(), url.to_string(), queue.clone(), token.map(str::to_owned));
        workers.push(tokio::spawn(async move {
            let mut times = Vec::new();
            loop {
                let Some(body) = queue.lock().expect("queue").next() else { break };
                let t = Instant::now();
                let mut req = client.post(&url).header("content-type", "application/json").body(body);
                if let Some(t) = &token {
                    req = req.bearer_auth(t);
                }
                let resp = req.send().await.map_err(|e| e.to_string())?;
                let status = resp.status();
                let text = resp.text().await.map_err(|e| e.to_string())?;
                if !status.is_success() {
                    return Err(format!("{url}: {status} {text}"));
                }
                times.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            Ok::<_, String>(times)
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.map_err(|e| e.to_string())??);
    }
    all.sort_by(f64::total_cmp);
    Ok(all)
}

/// Request bodies of single memories `first..first + n` (`POST /v1/memories`).
pub(crate) fn single_bodies(first: usize, n: usize, dim: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng(0x5EED ^ first as u64);
    (first..first + n).map(|i| serde_json::to_vec(&memory_json(&mut rng, i, dim)).expect("serializes")).collect()
}

/// Request bodies of batches of `batch` memories `first..first + n` (`POST /v1/memories/batch`).
pub(crate) fn batch_bodies(first: usize, n: usize, batch: usize, dim: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng(0xBA7C ^ first as u64);
    (first..first + n)
        .collect::<Vec<_>>()
        .chunks(batch)
        .map(|ids| {
            let memories: Vec<Value> = ids.iter().map(|&i| memory_json(&mut rng, i, dim)).collect();
            serde_json::to_vec(&json!({ "memories": memories })).expect("serializes")
        })
        .collect()
}

/// Send `bodies` to `url` with `concurrency` in flight: (seconds for all, each
/// request's milliseconds sorted).
async fn timed_load(url: &str, bodies: Vec<Vec<u8>>, concurrency: usize) -> Result<(f64, Vec<f64>), String> {
    let client = reqwest::Client::new();
    let started = Instant::now();
    let ms = load(&client, url, None, bodies, concurrency).await?;
    Ok((started.elapsed().as_secs_f64(), ms))
}

/// Environment of a benchmark server: no rate limit (the load comes from one address).
pub(crate) fn bench_env(extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = vec![("MEMHUB_RATE_PER_SECOND".to_string(), "0".to_string())];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

/// `bench writes`: see [`Which::Writes`].
async fn writes(config: &Config, clients: usize, singles: usize, count: usize, rounds: usize) -> Result<(), String> {
    let dim = config.engine.embedding_dim;
    eprintln!("generating {singles} single and {count} batched memories ...");
    let single = single_bodies(0, singles, dim);
    let batches = batch_bodies(singles, count, 1000, dim);
    let mut runs: Vec<Value> = Vec::new();
    for pass in 0..rounds.max(1) {
        // Alternate which mode goes first, so drift on a shared machine hits both.
        let order = if pass % 2 == 0 { ["false", "true"] } else { ["true", "false"] };
        for grouping in order {
            let server =
                ServerProcess::start_with(config, bench_env(&[("MEMHUB_GROUP_COMMIT", grouping)]), |_| Ok(()))?;
            let (s_secs, s_ms) = timed_load(&format!("{}/v1/memories", server.base), single.clone(), clients).await?;
            let (b_secs, _) = timed_load(&format!("{}/v1/memories/batch", server.base), batches.clone(), 2).await?;
            let run = json!({
                "group_commit": grouping == "true",
                "round": pass,
                "single_stores_per_second": (singles as f64 / s_secs).round(),
                "single_ms_p50": round(percentile(&s_ms, 0.5)),
                "single_ms_p99": round(percentile(&s_ms, 0.99)),
                "batched_memories_per_second": (count as f64 / b_secs).round(),
            });
            eprintln!("{run}");
            runs.push(run);
        }
    }
    let summary = |grouping: bool| {
        let of = |key: &str| {
            median(runs.iter().filter(|r| r["group_commit"] == grouping).filter_map(|r| r[key].as_f64()).collect())
        };
        json!({
            "single_stores_per_second": of("single_stores_per_second"),
            "single_ms_p50": of("single_ms_p50"),
            "single_ms_p99": of("single_ms_p99"),
            "batched_memories_per_second": of("batched_memories_per_second"),
        })
    };
    let (off, on) = (summary(false), summary(true));
    let ratio = |key: &str| round(on[key].as_f64().unwrap_or(0.0) / off[key].as_f64().unwrap_or(1.0));
    let report = json!({
        "bench": "writes",
        "clients": clients,
        "singles": singles,
        "batched": count,
        "rounds": rounds,
        "medians_group_commit_off": off,
        "medians_group_commit_on": on,
        "single_stores_ratio_on_over_off": ratio("single_stores_per_second"),
        "batched_ratio_on_over_off": ratio("batched_memories_per_second"),
        "runs": runs,
    });
    println!("{}", serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?);
    Ok(())
}

fn micros_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

/// Follow `GET /v1/events` from `after`: the lag (ms, arrival minus the change's
/// `at`) of each event, until `expect` events arrived or `stop` is set.
async fn follow_events(base: String, after: i64, expect: usize, stop: Arc<AtomicBool>) -> Result<Vec<f64>, String> {
    let mut resp = reqwest::Client::new()
        .get(format!("{base}/v1/events?after={after}"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("events: {}", resp.status()));
    }
    let mut lags = Vec::with_capacity(expect);
    let mut buf: Vec<u8> = Vec::new();
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
    while lags.len() < expect && !stop.load(Ordering::Relaxed) {
        let chunk = match tokio::time::timeout(Duration::from_millis(500), resp.chunk()).await {
            Err(_) => continue,
            Ok(c) => c.map_err(|e| e.to_string())?,
        };
        let Some(chunk) = chunk else { break };
        let arrived = micros_now();
        buf.extend_from_slice(&chunk);
        // Each complete event's `at` (ISO-8601) is found in the bytes, not by a full
        // parse: the client shares the server's cores, so it must cost little.
        let mut start = 0;
        while let Some(end) = find(&buf[start..], b"\n\n") {
            let event = &buf[start..start + end];
            start += end + 2;
            let at = find(event, b"\"at\":\"").and_then(|i| {
                let rest = &event[i + 6..];
                let text = std::str::from_utf8(&rest[..rest.iter().position(|&b| b == b'"')?]).ok()?;
                chrono::DateTime::parse_from_rfc3339(text).ok()
            });
            if let Some(at) = at {
                lags.push((arrived - at.timestamp_micros()) as f64 / 1000.0);
            }
        }
        buf.drain(..start);
    }
    Ok(lags)
}

/// A webhook receiver on a free loopback port: counts the changes it was sent.
async fn webhook_receiver() -> Result<(String, Arc<AtomicUsize>), String> {
    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let counter = counter.clone();
            async move {
                // Counted without building the changes: the receiver shares the server's cores.
                #[derive(serde::Deserialize)]
                struct Delivery {
                    data: Batch,
                }
                #[derive(serde::Deserialize)]
                struct Batch {
                    changes: Vec<serde::de::IgnoredAny>,
                }
                let n = serde_json::from_slice::<Delivery>(&body).map_or(0, |d| d.data.changes.len());
                counter.fetch_add(n, Ordering::Relaxed);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let url = format!("http://{}/hook", listener.local_addr().map_err(|e| e.to_string())?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, received))
}

/// Wait until `done()` or `limit` passed; seconds waited.
async fn wait_for(limit: Duration, done: impl Fn() -> bool) -> f64 {
    let started = Instant::now();
    while !done() && started.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    started.elapsed().as_secs_f64()
}

/// `bench feed`: see [`Which::Feed`].
async fn feed(
    config: &Config,
    count: usize,
    rounds: usize,
    subscribers: usize,
    clients: usize,
    singles: usize,
) -> Result<(), String> {
    let dim = config.engine.embedding_dim;
    eprintln!("generating {count} batched and {singles} single memories ...");
    let batches = batch_bodies(0, count, 1000, dim);
    let single = single_bodies(count, singles, dim);
    let env = bench_env(&[("MEMHUB_WEBHOOKS_ALLOW_PRIVATE_TARGETS", "true")]);

    // 1. What attached consumers cost the writers.
    let mut runs: Vec<Value> = Vec::new();
    for pass in 0..rounds.max(1) {
        let order = if pass % 2 == 0 { [false, true] } else { [true, false] };
        for attached in order {
            let server = ServerProcess::start_with(config, env.clone(), |_| Ok(()))?;
            let stop = Arc::new(AtomicBool::new(false));
            let mut consumers = None;
            if attached {
                let (url, delivered) = webhook_receiver().await?;
                let resp = reqwest::Client::new()
                    .post(format!("{}/v1/webhooks", server.base))
                    .json(&json!({ "url": url }))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if !resp.status().is_success() {
                    return Err(format!(
                        "webhook registration: {} {}",
                        resp.status(),
                        resp.text().await.unwrap_or_default()
                    ));
                }
                let sse = tokio::spawn(follow_events(server.base.clone(), 0, count, stop.clone()));
                consumers = Some((sse, delivered));
            }
            let (secs, ms) = timed_load(&format!("{}/v1/memories/batch", server.base), batches.clone(), 2).await?;
            let mut run = json!({
                "consumers": attached,
                "round": pass,
                "memories_per_second": (count as f64 / secs).round(),
                "batch_ms_p50": round(percentile(&ms, 0.5)),
            });
            if let Some((sse, delivered)) = consumers {
                let caught_up = wait_for(Duration::from_secs(120), || delivered.load(Ordering::Relaxed) >= count).await;
                stop.store(true, Ordering::Relaxed);
                let lags = sse.await.map_err(|e| e.to_string())??;
                run["sse_events"] = json!(lags.len());
                run["webhook_changes"] = json!(delivered.load(Ordering::Relaxed));
                run["webhook_caught_up_seconds_after_ingest"] = json!(round(caught_up));
            }
            eprintln!("{run}");
            runs.push(run);
        }
    }
    let rate = |attached: bool| {
        median(
            runs.iter()
                .filter(|r| r["consumers"] == attached)
                .filter_map(|r| r["memories_per_second"].as_f64())
                .collect(),
        )
    };
    let (off, on) = (rate(false), rate(true));

    // 2. Lag with many subscribers while single writes go at full speed.
    let server = ServerProcess::start_with(config, env.clone(), |_| Ok(()))?;
    let stop = Arc::new(AtomicBool::new(false));
    let followers: Vec<_> =
        (0..subscribers).map(|_| tokio::spawn(follow_events(server.base.clone(), 0, singles, stop.clone()))).collect();
    // Every stream is open before the first write.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (secs, ms) = timed_load(&format!("{}/v1/memories", server.base), single, clients).await?;
    let limit = tokio::time::sleep(Duration::from_secs(120));
    tokio::pin!(limit);
    let mut lags = Vec::new();
    let mut complete = 0;
    for f in followers {
        tokio::select! {
            got = f => {
                let got = got.map_err(|e| e.to_string())??;
                complete += usize::from(got.len() == singles);
                lags.extend(got);
            }
            _ = &mut limit => { stop.store(true, Ordering::Relaxed); }
        }
    }
    lags.sort_by(f64::total_cmp);
    let report = json!({
        "bench": "feed",
        "ingest": {
            "memories": count,
            "rounds": rounds,
            "median_memories_per_second_no_consumer": off,
            "median_memories_per_second_sse_and_webhook": on,
            "cost_percent": round((1.0 - on / off) * 100.0),
            "runs": runs,
        },
        "lag": {
            "subscribers": subscribers,
            "clients": clients,
            "single_stores": singles,
            "single_stores_per_second": (singles as f64 / secs).round(),
            "single_ms_p99": round(percentile(&ms, 0.99)),
            "subscribers_complete": complete,
            "events": lags.len(),
            "lag_ms_p50": round(percentile(&lags, 0.5)),
            "lag_ms_p99": round(percentile(&lags, 0.99)),
            "lag_ms_max": lags.last().copied().map(round),
        },
    });
    println!("{}", serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?);
    Ok(())
}

async fn auth(config: &Config, count: usize, queries: usize, concurrency: usize, rounds: usize) -> Result<(), String> {
    let dim = config.engine.embedding_dim;
    let client = reqwest::Client::new();
    let mut rng = Rng(0xA17B);
    // A 20k-word vocabulary (as in `bench search`): queries are selective, so search
    // time is what an agent sees and the auth share of it is not diluted.
    let vocabulary = Vocabulary::new(20_000);
    let batches: Vec<Vec<u8>> = (0..count)
        .collect::<Vec<_>>()
        .chunks(500)
        .map(|ids| {
            let memories: Vec<Value> = ids
                .iter()
                .map(|&i| {
                    let mut m = memory_json(&mut rng, i, dim);
                    m["content"] = json!(vocabulary.text(&mut rng, 20));
                    m
                })
                .collect();
            serde_json::to_vec(&json!({ "memories": memories })).expect("serializes")
        })
        .collect();
    // Keyword searches (~1 ms in the server: the worst case for the auth share) and
    // hybrid ones with a query vector (uniform random vectors: a slow graph walk).
    let keyword: Vec<Vec<u8>> = (0..queries)
        .map(|_| {
            let body = json!({"query": vocabulary.text(&mut rng, 3), "semantic_ratio": 0, "limit": 10});
            serde_json::to_vec(&body).expect("serializes")
        })
        .collect();
    let hybrid: Vec<Vec<u8>> = (0..queries / 4)
        .map(|i| {
            let m = memory_json(&mut rng, count + i, dim);
            let body = json!({"query": vocabulary.text(&mut rng, 3), "query_embedding": m["embedding"], "limit": 10});
            serde_json::to_vec(&body).expect("serializes")
        })
        .collect();
    // (ingest memories/s, keyword searches/s, keyword p50 ms, hybrid searches/s) per round, per mode.
    let mut results: [Vec<(f64, f64, f64, f64)>; 2] = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        for (mode, secured) in [(0, false), (1, true)] {
            let key = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
            let env: Vec<(String, String)> = if secured {
                vec![("MEMHUB_AUTH".into(), "required".into()), ("MEMHUB_RATE_PER_SECOND".into(), "0".into())]
            } else {
                vec![("MEMHUB_AUTH".into(), "open".into()), ("MEMHUB_AUDIT".into(), "false".into())]
            };
            let slot = key.clone();
            let server = ServerProcess::start_with(config, env, move |dir| {
                if secured {
                    let store = memhub_govern::KeyStore::open(dir).map_err(|e| e.to_string())?;
                    let made = store
                        .create(memhub_govern::NewKey {
                            role: memhub_govern::Role::Admin,
                            tenant: memhub_types::DEFAULT_TENANT.into(),
                            user_id: None,
                            systems: None,
                            kinds: None,
                            expires_at: None,
                            name: Some("bench".into()),
                            can_read: true,
                            superadmin: false,
                        })
                        .map_err(|e| e.to_string())?;
                    *slot.lock().expect("key") = Some(made.secret);
                }
                Ok(())
            })?;
            let token = key.lock().expect("key").clone();
            let t = Instant::now();
            load(&client, &format!("{}/v1/memories/batch", server.base), token.as_deref(), batches.clone(), 2).await?;
            let ingest = count as f64 / t.elapsed().as_secs_f64();
            // Let the index catch up so both modes search the same persisted state.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let url = format!("{}/v1/search", server.base);
            let t = Instant::now();
            let ms = load(&client, &url, token.as_deref(), keyword.clone(), concurrency).await?;
            let qps = keyword.len() as f64 / t.elapsed().as_secs_f64();
            let t = Instant::now();
            load(&client, &url, token.as_deref(), hybrid.clone(), concurrency).await?;
            let hybrid_qps = hybrid.len() as f64 / t.elapsed().as_secs_f64();
            eprintln!(
                "round {round} {}: ingest {ingest:.0}/s, keyword search {qps:.0}/s (p50 {:.2} ms), hybrid {hybrid_qps:.0}/s",
                if secured { "auth+audit" } else { "open" },
                percentile(&ms, 0.5)
            );
            results[mode].push((ingest, qps, percentile(&ms, 0.5), hybrid_qps));
        }
    }
    type Round = (f64, f64, f64, f64);
    let med = |mode: usize, f: fn(&Round) -> f64| median(results[mode].iter().map(f).collect());
    let side = |mode: usize| {
        json!({"ingest_per_second": med(mode, |r| r.0).round(), "keyword_searches_per_second": med(mode, |r| r.1).round(),
               "keyword_search_p50_ms": round(med(mode, |r| r.2)), "hybrid_searches_per_second": med(mode, |r| r.3).round()})
    };
    let slowdown = |f: fn(&Round) -> f64| round((1.0 - med(1, f) / med(0, f)) * 100.0);
    let report = json!({
        "memories_per_round": count,
        "keyword_searches_per_round": keyword.len(),
        "hybrid_searches_per_round": hybrid.len(),
        "search_concurrency": concurrency,
        "rounds": rounds,
        "open_no_audit": side(0),
        "auth_and_audit": side(1),
        "ingest_slowdown_percent": slowdown(|r| r.0),
        "keyword_search_slowdown_percent": slowdown(|r| r.1),
        "hybrid_search_slowdown_percent": slowdown(|r| r.3),
    });
    println!("{}", serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?);
    Ok(())
}

fn load_encoder(config: &Config) -> Result<memhub_embed::MiniLmEncoder, String> {
    let dir = config.model_dir();
    memhub_embed::MiniLmEncoder::load(&dir)
        .map_err(|e| format!("{e}; install the model with scripts/fetch-model.sh or set MEMHUB_MODEL_DIR"))
}

pub(crate) fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn embed(config: &Config, sentences: usize, min_words: usize, max_words: usize) -> Result<(), String> {
    use memhub_types::Embedder;
    let t = Instant::now();
    let encoder = load_encoder(config)?;
    let load_ms = t.elapsed().as_secs_f64() * 1000.0;
    let mut rng = Rng(42);
    let span = max_words.max(min_words) - min_words + 1;
    let texts: Vec<String> = (0..sentences)
        .map(|_| {
            let n = min_words.max(1) + (rng.next() % span as u64) as usize;
            (0..n).map(|_| WORDS[(rng.next() % WORDS.len() as u64) as usize]).collect::<Vec<_>>().join(" ")
        })
        .collect();
    let tokens: usize = texts.iter().map(|t| encoder.token_count(t).unwrap_or(0)).sum();
    let mut rows = Vec::new();
    for batch in [1usize, 8, 32] {
        let mut rates = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            for chunk in texts.chunks(batch) {
                let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
                encoder.embed(&refs).map_err(|e| e.to_string())?;
            }
            rates.push(texts.len() as f64 / t.elapsed().as_secs_f64());
        }
        let rate = median(rates);
        rows.push(json!({
            "batch_size": batch,
            "sentences_per_second": rate.round(),
            "tokens_per_second": (rate * tokens as f64 / texts.len() as f64).round(),
        }));
    }
    let report = json!({
        "model": encoder.model_name(),
        "model_load_ms": load_ms.round(),
        "sentences": sentences,
        "mean_tokens_per_sentence": (tokens as f64 / texts.len() as f64 * 10.0).round() / 10.0,
        "results": rows,
    });
    println!("{}", serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?);
    Ok(())
}

/// `1:56 pm on 8 May, 2023` -> microseconds.
fn locomo_time(s: &str) -> Option<i64> {
    chrono::NaiveDateTime::parse_from_str(s.trim(), "%I:%M %p on %d %B, %Y")
        .ok()
        .map(|t| t.and_utc().timestamp_micros())
}

fn locomo(config: &Config, data: &std::path::Path, text_mode: LocomoText) -> Result<(), String> {
    use memhub_types::{Embedder, MemoryFilter, NewMemory, SearchRequest};
    use std::collections::{BTreeMap, HashSet};
    let encoder: std::sync::Arc<dyn Embedder> = std::sync::Arc::new(load_encoder(config)?);
    let mut files: Vec<_> = std::fs::read_dir(data)
        .map_err(|e| format!("{}: {e}", data.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("no LoCoMo .json files in {}", data.display()));
    }
    // `hybrid` is the server's default fusion (`DEFAULT_SEMANTIC_RATIO`); the others
    // show how the weight moves recall.
    let modes = [
        ("dense", Some(1.0f32)),
        ("bm25", Some(0.0)),
        ("hybrid", None),
        ("hybrid_ratio_0.2", Some(0.2)),
        ("hybrid_ratio_0.5", Some(0.5)),
        ("hybrid_ratio_0.7", Some(0.7)),
    ];
    let mut embed_ms = Vec::new();
    // mode -> category -> sums of recall@1, @5, @10, hit@1, @5, @10, and the question count.
    // recall@k: the share of a question's evidence turns in the top k; hit@k: 1 if any is.
    let mut totals: BTreeMap<&str, BTreeMap<String, [f64; 7]>> = BTreeMap::new();
    let mut latencies: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let engine = memhub_engine::Engine::open_with(
        dir.path(),
        config.engine.clone(),
        memhub_engine::OpenMode::ReadWrite,
        Some(encoder.clone()),
    )
    .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut turns_total = 0;
    for file in &files {
        let conv: Value = serde_json::from_str(&std::fs::read_to_string(file).map_err(|e| e.to_string())?)
            .map_err(|e| format!("{}: {e}", file.display()))?;
        let c = conv.get("conversation").unwrap_or(&conv);
        let system = format!("locomo-{}", file.file_stem().unwrap_or_default().to_string_lossy());
        let mut memories = Vec::new();
        for n in 1.. {
            let Some(turns) = c.get(format!("session_{n}")).and_then(Value::as_array) else {
                if n > 60 {
                    break;
                }
                continue;
            };
            let date = c.get(format!("session_{n}_date_time")).and_then(Value::as_str).unwrap_or("");
            let at = locomo_time(date);
            for (k, t) in turns.iter().enumerate() {
                let speaker = t["speaker"].as_str().unwrap_or("");
                let plain = t["text"].as_str().unwrap_or("");
                let text = match t.get("blip_caption").and_then(Value::as_str) {
                    Some(caption) => format!("{plain} [shares a photo: {caption}]"),
                    None => plain.to_string(),
                };
                let content = match text_mode {
                    LocomoText::Plain => plain.to_string(),
                    LocomoText::Speaker => format!("{speaker}: {text}"),
                    LocomoText::SpeakerDate => format!("{speaker} ({date}): {text}"),
                };
                memories.push(NewMemory {
                    system_id: Some(system.clone()),
                    memory_id: Some(t["dia_id"].as_str().map(str::to_owned).unwrap_or_else(|| format!("D{n}:{k}"))),
                    kind: Some("conversation".into()),
                    content,
                    metadata: Some(json!({"speaker": speaker, "session": n}).as_object().cloned().unwrap_or_default()),
                    created_at: at.map(|a| a + k as i64),
                    ..Default::default()
                });
            }
        }
        turns_total += memories.len();
        for chunk in memories.chunks(256) {
            let texts: Vec<&str> = chunk.iter().map(|m| m.content.as_str()).collect();
            let vectors = encoder.embed(&texts).map_err(|e| e.to_string())?;
            let batch: Vec<NewMemory> =
                chunk.iter().cloned().zip(vectors).map(|(m, v)| NewMemory { embedding: Some(v), ..m }).collect();
            for r in engine
                .store_batch(&memhub_types::DEFAULT_TENANT.into(), batch, memhub_types::memory::IngestionMethod::Import)
                .map_err(|e| e.to_string())?
            {
                r.map_err(|e| e.to_string())?;
            }
        }
        let known: HashSet<String> = memories.iter().filter_map(|m| m.memory_id.clone()).collect();
        for qa in conv["qa"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let evidence: Vec<String> = qa["evidence"]
                .as_array()
                .map(|e| {
                    e.iter().filter_map(Value::as_str).map(str::to_owned).filter(|id| known.contains(id)).collect()
                })
                .unwrap_or_default();
            let question = qa["question"].as_str().unwrap_or("");
            if evidence.is_empty() || question.is_empty() {
                continue;
            }
            let category = format!("cat{}", qa["category"].as_u64().unwrap_or(0));
            // Embed the question once; every mode with a vector retriever reuses it.
            let t = Instant::now();
            let query_vector = encoder.embed(&[question]).map_err(|e| e.to_string())?.pop();
            embed_ms.push(t.elapsed().as_secs_f64() * 1000.0);
            for (mode, ratio) in modes {
                let req = SearchRequest {
                    query: question.to_string(),
                    query_embedding: if ratio != Some(0.0) { query_vector.clone() } else { None },
                    limit: Some(10),
                    semantic_ratio: ratio,
                    filter: MemoryFilter { system_id: Some(system.clone()), ..Default::default() },
                    ..Default::default()
                };
                let t = Instant::now();
                let found = engine.search(&memhub_types::DEFAULT_TENANT.into(), &req).map_err(|e| e.to_string())?;
                latencies.entry(mode).or_default().push(t.elapsed().as_secs_f64() * 1000.0);
                let ids: Vec<&str> = found.results.iter().map(|h| h.memory.memory_id.as_str()).collect();
                let found_in = |k: usize| evidence.iter().filter(|e| ids.iter().take(k).any(|id| id == e)).count();
                let recall = |k: usize| found_in(k) as f64 / evidence.len() as f64;
                let hit = |k: usize| if found_in(k) > 0 { 1.0 } else { 0.0 };
                for cat in [category.clone(), "overall".to_string()] {
                    let row = totals.entry(mode).or_default().entry(cat).or_insert([0.0; 7]);
                    for (slot, value) in
                        [recall(1), recall(5), recall(10), hit(1), hit(5), hit(10), 1.0].into_iter().enumerate()
                    {
                        row[slot] += value;
                    }
                }
            }
        }
    }
    let mut report = serde_json::Map::new();
    for (mode, cats) in &totals {
        let mut by_cat = serde_json::Map::new();
        for (cat, [r1, r5, r10, h1, h5, h10, n]) in cats {
            by_cat.insert(
                cat.clone(),
                json!({"r@1": round(r1 / n), "r@5": round(r5 / n), "r@10": round(r10 / n),
                       "hit@1": round(h1 / n), "hit@5": round(h5 / n), "hit@10": round(h10 / n), "questions": *n as u64}),
            );
        }
        let lat = latencies.get(mode).cloned().unwrap_or_default();
        by_cat.insert("search_ms_p50".into(), json!(round(median(lat))));
        report.insert((*mode).to_string(), Value::Object(by_cat));
    }
    report.insert("query_embedding_ms_p50".into(), json!(round(median(embed_ms))));
    report.insert("turns".into(), json!(turns_total));
    report.insert("text".into(), json!(format!("{text_mode:?}")));
    report.insert("seconds".into(), json!(round(started.elapsed().as_secs_f64())));
    println!("{}", serde_json::to_string_pretty(&Value::Object(report)).map_err(|e| e.to_string())?);
    Ok(())
}

/// A unit vector near one of `centroids` (clustered data, as real embeddings are).
pub(crate) fn clustered(rng: &mut Rng, centroids: &[Vec<f32>], noise: f32) -> Vec<f32> {
    let c = &centroids[(rng.next() % centroids.len() as u64) as usize];
    let mut v: Vec<f32> = c.iter().map(|x| x + noise * rng.unit()).collect();
    memhub_embed::l2_normalize(&mut v);
    v
}

/// 200 random unit cluster centres.
pub(crate) fn centroids(rng: &mut Rng, dim: usize) -> Vec<Vec<f32>> {
    (0..200)
        .map(|_| {
            let mut c: Vec<f32> = (0..dim).map(|_| rng.unit()).collect();
            memhub_embed::l2_normalize(&mut c);
            c
        })
        .collect()
}

/// Store memories `make(0..count)` in batches of 1000 (with a progress bar) and
/// return every vector in f32, in order: memory `i` is store seq `i + 1` in a fresh
/// store, and the benchmarks' exact ground truth scans these.
/// Generate the corpus (the same memories for the same generator state) and store it
/// when `engine` is given; returns every vector, in order, for exact ground truth.
pub(crate) fn corpus(
    engine: Option<&memhub_engine::Engine>,
    count: usize,
    mut make: impl FnMut(usize) -> memhub_types::NewMemory,
) -> Result<Vec<f32>, String> {
    let mut all_vectors = Vec::with_capacity(count * engine.map_or(0, |e| e.config().embedding_dim));
    let progress = indicatif::ProgressBar::new(count as u64);
    for start in (0..count).step_by(1000) {
        let batch: Vec<memhub_types::NewMemory> = (start..(start + 1000).min(count)).map(&mut make).collect();
        for m in &batch {
            all_vectors.extend_from_slice(m.embedding.as_deref().unwrap_or_default());
        }
        if let Some(engine) = engine {
            for r in engine
                .store_batch(&memhub_types::DEFAULT_TENANT.into(), batch, memhub_types::memory::IngestionMethod::Import)
                .map_err(|e| e.to_string())?
            {
                r.map_err(|e| e.to_string())?;
            }
        }
        progress.inc(1000);
    }
    progress.finish_and_clear();
    Ok(all_vectors)
}

fn search_probe(
    config: &Config,
    dir: &std::path::Path,
    queries: usize,
    hybrid: bool,
    filtered: bool,
) -> Result<(), String> {
    use memhub_types::{MemoryFilter, SearchRequest, DEFAULT_TENANT};
    let engine = memhub_engine::Engine::open(dir, config.engine.clone(), memhub_engine::OpenMode::ReadWrite)
        .map_err(|e| e.to_string())?;
    let mut rng = Rng(11);
    let dim = config.engine.embedding_dim;
    let (vocabulary, centres) = (Vocabulary::new(20_000), centroids(&mut Rng(7), dim));
    let mut ms = Vec::new();
    for q in 0..queries {
        let req = if hybrid {
            let system = filtered.then(|| format!("sys-{}", q % 100));
            SearchRequest {
                query: vocabulary.text(&mut rng, 3),
                query_embedding: Some(clustered(&mut rng, &centres, 0.06)),
                limit: Some(10),
                filter: MemoryFilter { system_id: system, ..Default::default() },
                ..Default::default()
            }
        } else {
            let mut v: Vec<f32> = (0..dim).map(|_| rng.unit()).collect();
            memhub_embed::l2_normalize(&mut v);
            SearchRequest { query: "memory".into(), query_embedding: Some(v), ..Default::default() }
        };
        let t = Instant::now();
        engine.search(&DEFAULT_TENANT.into(), &req).map_err(|e| e.to_string())?;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    println!("{}", json!({ "rss_kib": rss_kib(std::process::id()), "search": latency(ms) }));
    Ok(())
}

/// A Zipf-distributed vocabulary of made-up words: real text has a few very common
/// words and a long tail, which is what makes BM25 postings long or short.
pub(crate) struct Vocabulary {
    words: Vec<String>,
    cumulative: Vec<f64>,
}

impl Vocabulary {
    pub(crate) fn new(size: usize) -> Self {
        const SYLLABLES: [&str; 16] =
            ["ka", "lo", "mi", "ne", "ru", "ta", "vo", "shi", "den", "par", "qu", "zel", "bri", "fo", "gan", "tor"];
        let words = (0..size)
            .map(|mut i| {
                let mut w = String::new();
                loop {
                    w.push_str(SYLLABLES[i % 16]);
                    i /= 16;
                    if i == 0 {
                        break;
                    }
                }
                w
            })
            .collect();
        let mut total = 0.0;
        let cumulative = (0..size)
            .map(|r| {
                total += 1.0 / (r as f64 + 1.0);
                total
            })
            .collect();
        Vocabulary { words, cumulative }
    }

    fn word(&self, rng: &mut Rng) -> &str {
        let x = (rng.next() >> 11) as f64 / (1u64 << 53) as f64 * self.cumulative.last().copied().unwrap_or(1.0);
        let i = self.cumulative.partition_point(|c| *c < x).min(self.words.len() - 1);
        &self.words[i]
    }

    pub(crate) fn text(&self, rng: &mut Rng, n: usize) -> String {
        (0..n).map(|_| self.word(rng)).collect::<Vec<_>>().join(" ")
    }
}

pub(crate) fn timed_ms(ms: &mut Vec<f64>, f: impl FnOnce()) {
    let t = Instant::now();
    f();
    ms.push(t.elapsed().as_secs_f64() * 1000.0);
}

pub(crate) fn latency(mut ms: Vec<f64>) -> Value {
    ms.sort_by(f64::total_cmp);
    json!({"p50_ms": round(percentile(&ms, 0.5)), "p99_ms": round(percentile(&ms, 0.99))})
}

fn search(
    config: &Config,
    count: usize,
    queries: usize,
    noise: f32,
    ef_sweep: &[usize],
    data_dir: Option<&std::path::Path>,
) -> Result<(), String> {
    use memhub_engine::index::DocId;
    use memhub_types::{MemoryFilter, NewMemory, SearchRequest, Tier, DEFAULT_TENANT};
    let dim = config.engine.embedding_dim;
    let temporary = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir = data_dir.unwrap_or(temporary.path());
    let open = || {
        memhub_engine::Engine::open(dir, config.engine.clone(), memhub_engine::OpenMode::ReadWrite)
            .map_err(|e| e.to_string())
    };
    let engine = open()?;
    let reused = match engine.indexes().sizes().memories {
        0 => false,
        n if n == count => true,
        n => return Err(format!("{} holds {n} memories, not the {count} asked for", dir.display())),
    };
    let mut rng = Rng(7);
    let vocabulary = Vocabulary::new(20_000);
    let centroids = centroids(&mut rng, dim);
    // The f32 vectors are the exact ground truth (the engine's own exact scans read
    // 8-bit copies).
    let rss_before = rss_kib(std::process::id()).unwrap_or(0);
    let started = Instant::now();
    let all_vectors = corpus((!reused).then_some(&engine), count, |i| NewMemory {
        // 100 systems: a system_id filter selects 1% of the corpus; 10 projects: 10%.
        system_id: Some(format!("sys-{}", i % 100)),
        project: Some(format!("p{}", i % 10)),
        memory_id: Some(format!("m{i}")),
        content: format!("memory {i}: {}", vocabulary.text(&mut rng, 20)),
        embedding: Some(clustered(&mut rng, &centroids, noise)),
        ..Default::default()
    })?;
    let ingest_s = started.elapsed().as_secs_f64();
    // Index build: until the background maintainer has moved every write into the
    // persisted indexes (tantivy committed, HNSW graph built and saved).
    engine.checkpoint().map_err(|e| e.to_string())?;
    let build_s = started.elapsed().as_secs_f64();
    let rss_after = rss_kib(std::process::id()).unwrap_or(0);
    let sizes = engine.indexes().sizes();
    if sizes.memories != count {
        return Err(format!("expected {count} memories, the index has {}", sizes.memories));
    }
    let exact_top10 = |q: &[f32], ids: &mut dyn Iterator<Item = DocId>| -> Vec<DocId> {
        let mut scored: Vec<(DocId, f32)> = ids
            .map(|id| {
                let v = &all_vectors[(id as usize - 1) * dim..id as usize * dim];
                (id, v.iter().zip(q).map(|(a, b)| a * b).sum::<f32>())
            })
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1));
        scored.into_iter().take(10).map(|h| h.0).collect()
    };

    type FilterOf = fn(usize) -> MemoryFilter;
    let filters: [(&str, FilterOf); 3] = [
        ("none", |_| MemoryFilter::default()),
        ("1pct_system", |q| MemoryFilter { system_id: Some(format!("sys-{}", q % 100)), ..Default::default() }),
        ("10pct_project", |q| MemoryFilter { project: Some(format!("p{}", q % 10)), ..Default::default() }),
    ];
    let mut report_latency = serde_json::Map::new();
    let mut report_recall = serde_json::Map::new();
    for (name, filter) in filters {
        let (mut hybrid, mut vector, mut text, mut exact_ms) = (vec![], vec![], vec![], vec![]);
        let (mut hits, mut wanted) = (0usize, 0usize);
        let requests: Vec<SearchRequest> = (0..queries)
            .map(|q| {
                let query = vocabulary.text(&mut rng, 3);
                let qv = clustered(&mut rng, &centroids, noise);
                SearchRequest {
                    query,
                    query_embedding: Some(qv),
                    limit: Some(10),
                    filter: filter(q),
                    ..Default::default()
                }
            })
            .collect();
        // Searches back to back, as a server serves them; the ground truth below
        // streams every vector (GBs at 1M) and would leave each search a cold cache.
        for (q, req) in requests.iter().enumerate() {
            let mut found = 0;
            timed_ms(&mut hybrid, || {
                found = engine.search(&DEFAULT_TENANT.into(), req).map(|r| r.total_results).unwrap_or(0)
            });
            if found == 0 {
                return Err(format!("query {q} found nothing"));
            }
            let vreq = SearchRequest { semantic_ratio: Some(1.0), ..req.clone() };
            timed_ms(&mut vector, || drop(engine.search(&DEFAULT_TENANT.into(), &vreq)));
            let treq = SearchRequest { semantic_ratio: Some(0.0), query_embedding: None, ..req.clone() };
            timed_ms(&mut text, || drop(engine.search(&DEFAULT_TENANT.into(), &treq)));
        }
        for req in &requests {
            let qv = req.query_embedding.as_deref().unwrap_or_default();
            // Recall@10 of the vector retriever against an exact scan of the same filter;
            // the retriever is asked for as many candidates as a limit-10 search asks.
            let indexes = engine.indexes();
            let state = indexes.read();
            let plan = state.filters.plan(&DEFAULT_TENANT.into(), &req.filter, memhub_types::time::now_micros());
            let ann: Vec<DocId> = indexes
                .vector_search(&state, qv, &plan, &[Tier::Hot, Tier::Warm], 100)
                .into_iter()
                .take(10)
                .map(|h| h.0)
                .collect();
            // The engine's exact path (8-bit copies) for its latency; f32 for the truth.
            timed_ms(&mut exact_ms, || drop(indexes.vectors.exact(qv, plan.ids())));
            let truth = exact_top10(qv, &mut plan.ids());
            hits += truth.iter().filter(|t| ann.contains(t)).count();
            wanted += truth.len();
        }
        report_latency.insert(
            format!("filter_{name}"),
            json!({"hybrid": latency(hybrid), "vector_only": latency(vector), "text_only": latency(text),
                   "exact_vector_scan": latency(exact_ms)}),
        );
        report_recall.insert(format!("filter_{name}"), json!(round(hits as f64 / wanted.max(1) as f64)));
    }
    // Recall and latency of the unfiltered vector retriever as the search breadth grows.
    let mut sweep = Vec::new();
    {
        let indexes = engine.indexes();
        let queries: Vec<Vec<f32>> = (0..queries.min(200)).map(|_| clustered(&mut rng, &centroids, noise)).collect();
        let state = indexes.read();
        let plan =
            state.filters.plan(&DEFAULT_TENANT.into(), &MemoryFilter::default(), memhub_types::time::now_micros());
        let truths: Vec<Vec<DocId>> = queries.iter().map(|q| exact_top10(q, &mut plan.ids())).collect();
        for &ef in ef_sweep {
            indexes.vectors.set_expansion_search(ef);
            let (mut ms, mut hits) = (Vec::new(), 0);
            for (q, truth) in queries.iter().zip(&truths) {
                let mut found = Vec::new();
                timed_ms(&mut ms, || found = indexes.vector_search(&state, q, &plan, &[Tier::Hot, Tier::Warm], 100));
                hits += found.iter().take(10).filter(|h| truth.contains(&h.0)).count();
            }
            sweep
                .push(json!({"expansion_search": ef, "recall_at_10": round(hits as f64 / (10 * queries.len()) as f64),
                              "vector_retriever": latency(ms)}));
        }
        indexes.vectors.set_expansion_search(config.engine.hnsw.expansion_search);
    }
    let store_bytes = engine.stats(&DEFAULT_TENANT.into()).map(|s| s.store_bytes).unwrap_or(0);
    let simd = engine.indexes().vectors.hardware_acceleration();
    drop(engine);
    let reopen = Instant::now();
    let engine = open()?;
    let reopen_s = reopen.elapsed().as_secs_f64();
    let caught_up = engine.indexes().sizes();
    drop(engine);
    // Resident memory of a fresh process serving this data dir, minus one serving
    // an empty one: what a server holds per memory (the bulk load's peak is gone).
    // The probe must load the graph built here: with default HNSW settings (which
    // have no environment variables) it would find "another graph" and rebuild it
    // (minutes at 1M, and the wrong memory).
    let settings = tempfile::tempdir().map_err(|e| e.to_string())?;
    let settings_file = settings.path().join("memhub.toml");
    let hnsw = config.engine.hnsw;
    std::fs::write(
        &settings_file,
        format!(
            "[engine.hnsw]\nconnectivity = {}\nexpansion_add = {}\nexpansion_search = {}\n",
            hnsw.connectivity, hnsw.expansion_add, hnsw.expansion_search
        ),
    )
    .map_err(|e| e.to_string())?;
    let probe = |dir: &std::path::Path| -> Result<f64, String> {
        let out = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
            .arg("--config")
            .arg(&settings_file)
            .args(["bench", "search-probe", "--dir"])
            .arg(dir)
            .env("MEMHUB_EMBEDDING_DIM", dim.to_string())
            .env("MEMHUB_EMBEDDING_MODEL", &config.engine.embedding_model)
            .env("MEMHUB_EMBEDDER", "none")
            .output()
            .map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("probe: {e}: {}", String::from_utf8_lossy(&out.stderr)))?;
        Ok(v["rss_kib"].as_f64().unwrap_or(0.0) * 1024.0)
    };
    let empty = tempfile::tempdir().map_err(|e| e.to_string())?;
    let serving = probe(dir)?;
    let baseline = probe(empty.path())?;
    let rss_growth = rss_after.saturating_sub(rss_before) as f64 * 1024.0;
    let report = json!({
        "memories": count,
        "engine": "tantivy BM25 + usearch HNSW (f16, M=16), RRF; exact 8-bit scan for filters matching <= 16384",
        "hnsw": config.engine.hnsw,
        "corpus_reused": reused,
        "ingest_seconds": (!reused).then(|| round(ingest_s)),
        "index_build_seconds": (!reused).then(|| round(build_s)),
        "reopen_seconds": round(reopen_s),
        "reopen_caught_up": [caught_up.caught_up_text, caught_up.caught_up_vectors],
        "store_bytes": store_bytes,
        "text_index_bytes": sizes.text_disk_bytes,
        "vector_index_bytes": sizes.vector_disk_bytes,
        "vector_index_memory_bytes": sizes.vector_memory_bytes,
        "simd": simd,
        "noise": noise,
        "bulk_load_rss_growth_mib": (rss_growth / 1048576.0).round(),
        "serving_rss_mib": (serving / 1048576.0).round(),
        "empty_server_rss_mib": (baseline / 1048576.0).round(),
        "resident_bytes_per_memory": ((serving - baseline) / count as f64).round(),
        "recall_at_10_vs_exact": report_recall,
        "ef_sweep_unfiltered": sweep,
        "latency": report_latency,
    });
    println!("{}", serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?);
    Ok(())
}

/// `bench tiers`: see [`Which::Tiers`].
fn tiers(config: &Config, count: usize, queries: usize, noise: f32, cold_only: bool) -> Result<(), String> {
    use memhub_engine::index::DocId;
    use memhub_engine::{Engine, OpenMode};
    use memhub_types::{MemoryFilter, NewMemory, SearchRequest, Tier, DEFAULT_TENANT};
    /// The vector model of a `--cold-only` corpus (not the engine's, until the search).
    const ARCHIVE_MODEL: &str = "bench-archive";
    const DAY: i64 = 86_400_000_000;
    let dim = config.engine.embedding_dim;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (data, bucket) = (dir.path().join("data"), dir.path().join("bucket"));
    let now = memhub_types::time::now_micros();
    let mut engine_config = config.engine.clone();
    // Phase 1: nothing ages.
    engine_config.tiers.hot_days = 100_000.0;
    engine_config.tiers.warm_days = 100_000.0;
    engine_config.tiers.interval_seconds = 0;
    let open = |c: &memhub_engine::EngineConfig| {
        Engine::open(&data, c.clone(), OpenMode::ReadWrite).map_err(|e| e.to_string())
    };
    let mut engine = open(&engine_config)?;
    let mut rng = Rng(17);
    let vocabulary = Vocabulary::new(20_000);
    let centroids = centroids(&mut rng, dim);
    let t = Instant::now();
    let all_vectors = corpus(Some(&engine), count, |i| NewMemory {
        system_id: Some(format!("sys-{}", i % 10)),
        memory_id: Some(format!("m{i}")),
        content: format!("memory {i}: {}", vocabulary.text(&mut rng, 20)),
        embedding: Some(clustered(&mut rng, &centroids, noise)),
        embedding_model: cold_only.then(|| ARCHIVE_MODEL.to_string()),
        // i128: i * 365 days in microseconds overflows i64 past ~292k memories.
        created_at: Some(now - (i as i128 * 365 * DAY as i128 / count as i128) as i64 - 1),
        ..Default::default()
    })?;
    engine.checkpoint().map_err(|e| e.to_string())?;
    let stored_s = t.elapsed().as_secs_f64();
    let queries: Vec<(String, Vec<f32>)> =
        (0..queries).map(|_| (vocabulary.text(&mut rng, 3), clustered(&mut rng, &centroids, noise))).collect();
    let mut report = json!({"memories": count, "stored_seconds": round(stored_s)});
    let mut aging = serde_json::Map::new();

    if !cold_only {
        // Seq i + 1 is memory i in a fresh store; the truth is an exact f32 scan.
        let exact_top10 = |q: &[f32]| -> Vec<DocId> {
            let mut scored: Vec<(DocId, f32)> = (0..count)
                .map(|i| {
                    let v = &all_vectors[i * dim..(i + 1) * dim];
                    ((i + 1) as DocId, v.iter().zip(q).map(|(a, b)| a * b).sum::<f32>())
                })
                .collect();
            scored.select_nth_unstable_by(10, |a, b| b.1.total_cmp(&a.1));
            scored.truncate(10);
            scored.into_iter().map(|h| h.0).collect()
        };
        let truths: Vec<Vec<DocId>> = queries.iter().map(|(_, q)| exact_top10(q)).collect();
        let measure = |engine: &Engine, tier: Tier| -> Value {
            let (mut vector, mut hybrid, mut hits) = (Vec::new(), Vec::new(), 0usize);
            let indexes = engine.indexes();
            for ((text, qv), truth) in queries.iter().zip(&truths) {
                let state = indexes.read();
                let plan = state.filters.plan(&DEFAULT_TENANT.into(), &MemoryFilter::default(), now);
                let mut found = Vec::new();
                timed_ms(&mut vector, || found = indexes.vector_search(&state, qv, &plan, &[tier], 100));
                hits += found.iter().take(10).filter(|h| truth.contains(&h.0)).count();
                drop(state);
                let req = SearchRequest {
                    query: text.clone(),
                    query_embedding: Some(qv.clone()),
                    limit: Some(10),
                    tiers: Some(vec![tier]),
                    ..Default::default()
                };
                timed_ms(&mut hybrid, || drop(engine.search(&DEFAULT_TENANT.into(), &req)));
            }
            let sizes = indexes.sizes();
            json!({"vector_retriever": latency(vector), "hybrid_search": latency(hybrid),
                   "recall_at_10": round(hits as f64 / (10 * queries.len()) as f64),
                   "graph_memory_bytes": if tier == Tier::Hot { sizes.hot_graph_bytes } else { sizes.warm_graph_bytes },
                   "vectors": if tier == Tier::Hot { sizes.hot_vectors } else { sizes.warm_vectors }})
        };
        report["hot"] = measure(&engine, Tier::Hot);

        // Phase 2: everything older than a minute is warm.
        drop(engine);
        engine_config.tiers.hot_days = 0.0;
        engine = open(&engine_config)?;
        let t = Instant::now();
        let moved = engine.age_tiers().map_err(|e| e.to_string())?;
        engine.checkpoint().map_err(|e| e.to_string())?;
        aging.insert("to_warm".into(), json!(moved.to_warm));
        aging.insert("to_warm_seconds".into(), json!(round(t.elapsed().as_secs_f64())));
        report["warm"] = measure(&engine, Tier::Warm);
    }
    drop(all_vectors);

    // Phase 3: everything goes cold into a local bucket.
    drop(engine);
    engine_config.tiers.hot_days = 0.0;
    engine_config.tiers.warm_days = 0.0;
    engine_config.tiers.cold =
        Some(memhub_objects::BucketConfig { url: format!("file://{}", bucket.display()), ..Default::default() });
    engine = open(&engine_config)?;
    let t = Instant::now();
    let frozen = engine.age_tiers().map_err(|e| e.to_string())?;
    if cold_only {
        aging.insert("to_warm".into(), json!(frozen.to_warm));
    }
    aging.insert("to_cold".into(), json!(frozen.to_cold));
    aging.insert("files".into(), json!(frozen.files_written));
    aging.insert("to_cold_seconds".into(), json!(round(t.elapsed().as_secs_f64())));
    if cold_only {
        // The archive's vectors are the engine's model from here on.
        drop(engine);
        engine_config.embedding_model = ARCHIVE_MODEL.into();
        engine = open(&engine_config)?;
    }
    let cold_stats = engine.stats(&DEFAULT_TENANT.into()).map_err(|e| e.to_string())?.tiers[&Tier::Cold].clone();
    aging.insert("cold_memories".into(), json!(cold_stats.memories));
    aging.insert("cold_bytes".into(), json!(cold_stats.bytes));
    report["aging"] = Value::Object(aging);
    let rss_before = proc_status_kib("self", "VmRSS:").unwrap_or(0);
    let (mut first, mut cold_ms, mut found_total, mut with_vector) = (Vec::new(), Vec::new(), 0usize, 0usize);
    for (i, (text, qv)) in queries.iter().enumerate() {
        let req = SearchRequest {
            query: text.clone(),
            query_embedding: Some(qv.clone()),
            limit: Some(10),
            include_cold: true,
            filter: MemoryFilter { since: Some(now - 7 * DAY), ..Default::default() },
            ..Default::default()
        };
        let mut found = None;
        timed_ms(if i == 0 { &mut first } else { &mut cold_ms }, || {
            found = Some(engine.search(&DEFAULT_TENANT.into(), &req).map_err(|e| e.to_string()))
        });
        let found = found.ok_or("no search ran")??;
        found_total += found.total_results;
        with_vector += found.results.iter().filter(|h| h.retrievers.iter().any(|r| r == "vector")).count();
    }
    if found_total == 0 || with_vector == 0 {
        return Err(format!(
            "cold search found {found_total} results, {with_vector} by vector: the archive is not searchable"
        ));
    }
    report["cold_search_7_days"] = json!({
        "first_query_ms": round(first.first().copied().unwrap_or(0.0)),
        "cached": latency(cold_ms),
        "mean_results": round(found_total as f64 / queries.len() as f64),
        "window_memories": (7 * count).div_ceil(365),
        "cache_resident_mib": round((proc_status_kib("self", "VmRSS:").unwrap_or(0) as f64 - rss_before as f64) / 1024.0),
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    Ok(())
}
