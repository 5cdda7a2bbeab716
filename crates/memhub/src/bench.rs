//! `memhub bench ...`: benchmarks that print numbers. Targets are checked here, by
//! people reading the output, never in timed unit tests.

use std::process::{Child, Command, Stdio};
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
}

/// A small deterministic generator (xorshift64*), so runs are comparable.
struct Rng(u64);

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

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

struct ServerProcess {
    child: Child,
    port: u16,
    base: String,
    dir: tempfile::TempDir,
    dim: usize,
}

impl ServerProcess {
    /// Start `memhub serve` on a fresh data dir and a free port.
    fn start(config: &Config) -> Result<ServerProcess, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
        let dim = config.engine.embedding_dim;
        let child = Self::spawn(dir.path(), port, dim)?;
        let server = ServerProcess { child, port, base: format!("http://127.0.0.1:{port}"), dir, dim };
        server.wait_ready()?;
        Ok(server)
    }

    fn spawn(dir: &std::path::Path, port: u16, dim: usize) -> Result<Child, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        Command::new(exe)
            .args(["serve", "--addr", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(dir)
            .env("MEMHUB_LOG", "warn")
            .env("MEMHUB_EMBEDDING_DIM", dim.to_string())
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
        self.child = Self::spawn(self.dir.path(), self.port, self.dim)?;
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
    }
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
