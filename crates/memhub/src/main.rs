//! `memhub`: the command-line binary. It parses flags, loads configuration and wires
//! the engine to the transports; all behaviour lives in the library crates.

mod bench;
mod bench_backends;
mod bench_pgvector;
mod migrate;
mod sync;

use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use memhub_embed::{MiniLmEncoder, OpenAiEmbedder};
use memhub_engine::{EmbeddingWorker, Engine, LogFollower, OpenMode};
use memhub_server::auth::AuthMode;
use memhub_server::config::{EmbedderKind, StorageBackend};
use memhub_server::{AppState, Config};
use memhub_types::{Embedder, Memory, MemoryFilter, SearchRequest, DEFAULT_TENANT};

#[derive(Parser)]
#[command(name = "memhub", version, about = "A self-hosted memory hub for AI agents")]
struct Cli {
    /// A TOML config file (see docs/configuration.md).
    #[arg(long, global = true, env = "MEMHUB_CONFIG")]
    config: Option<PathBuf>,
    /// The data directory (default: the platform data dir; env MEMHUB_DATA_DIR).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: REST, MCP over streamable HTTP at /mcp.
    Serve {
        /// Listen address (default 127.0.0.1:8682; env MEMHUB_ADDR).
        #[arg(long)]
        addr: Option<std::net::SocketAddr>,
        /// auto, open or required (default auto: open on loopback until a key exists; env MEMHUB_AUTH).
        #[arg(long)]
        auth: Option<AuthMode>,
        /// Log filter, e.g. info or memhub=debug (env MEMHUB_LOG).
        #[arg(long)]
        log: Option<String>,
        #[command(flatten)]
        embedder: EmbedderFlags,
    },
    /// Serve MCP over stdin/stdout (for agents that launch memhub themselves).
    Mcp {
        /// Use stdio (the only local transport; `memhub serve` serves HTTP).
        #[arg(long, required = true)]
        stdio: bool,
        #[command(flatten)]
        embedder: EmbedderFlags,
    },
    /// Import memories from a JSONL file written by `memhub export`.
    Import {
        file: PathBuf,
        /// Records per transaction.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
    },
    /// Copy the embedded store of the data dir (memories with their history,
    /// schemas, retention policies, the graph, API keys, the audit chain) into a
    /// PostgreSQL database. Run it with no server on the data dir; run it again
    /// to finish an interrupted copy (what is there already is skipped).
    Migrate {
        /// The database, e.g. `postgres://memhub:secret@db:5432/memhub` (env MEMHUB_MIGRATE_TO).
        #[arg(long, env = "MEMHUB_MIGRATE_TO")]
        to: String,
    },
    /// Export every memory as JSONL (one record per line; `import` reads it back exactly).
    Export {
        /// Output file (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Only this tenant (default: all).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Search the store directly (read-only; works while a server runs).
    Search {
        query: String,
        #[arg(long, default_value_t = 10)]
        limit: usize,
        #[arg(long, default_value = DEFAULT_TENANT)]
        tenant: String,
        #[arg(long)]
        system_id: Option<String>,
        #[arg(long)]
        kind: Option<String>,
        /// Print the raw JSON response.
        #[arg(long)]
        json: bool,
    },
    /// Benchmarks (release build recommended).
    Bench {
        #[command(subcommand)]
        which: bench::Which,
    },
    /// API keys: create (the secret is printed once), list, revoke. Works while a server runs.
    Keys {
        #[command(subcommand)]
        op: KeysOp,
    },
    /// The audit log: check its hash chain, or print the latest records.
    Audit {
        #[command(subcommand)]
        op: AuditOp,
    },
    /// Tiers: run the aging job now (hot -> warm -> cold). With a server running,
    /// call `POST /v1/tiers/run` instead (the server holds the data dir).
    Tier {
        #[command(subcommand)]
        op: TierOp,
    },
    /// Send this system's memory databases (Session-Buddy's reflection.duckdb and
    /// knowledge_graph.duckdb) to a hub: upload to its bucket, or push over HTTP.
    /// Prints a JSON result; exits 1 if the sync failed.
    Sync(sync::SyncArgs),
}

/// The server-side embedder, as flags (each overrides the config file and the environment).
#[derive(clap::Args)]
struct EmbedderFlags {
    /// auto, minilm, openai or none (default auto: the local encoder if its files are there; env MEMHUB_EMBEDDER).
    #[arg(long)]
    embedder: Option<EmbedderKind>,
    /// Where the all-MiniLM-L6-v2 files are (default <data dir>/models/all-MiniLM-L6-v2; env MEMHUB_MODEL_DIR).
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// The OpenAI-compatible service's base URL, with --embedder openai (env MEMHUB_EMBEDDER_URL).
    #[arg(long)]
    embedder_url: Option<String>,
    /// The remote model's name, with --embedder openai (env MEMHUB_EMBEDDER_MODEL).
    #[arg(long)]
    embedder_model: Option<String>,
}

impl EmbedderFlags {
    fn apply(self, config: &mut Config) {
        let e = &mut config.embedder;
        e.kind = self.embedder.unwrap_or(e.kind);
        e.model_dir = self.model_dir.or(e.model_dir.take());
        e.url = self.embedder_url.or(e.url.take());
        e.model = self.embedder_model.or(e.model.take());
    }
}

#[derive(Subcommand)]
enum TierOp {
    /// Move every memory past its tier boundary now and print what moved (JSON).
    Run,
}

#[derive(Subcommand)]
enum KeysOp {
    /// Create a key and print its secret (shown once; only a hash is stored).
    Create {
        /// admin, manager, user or service.
        #[arg(long)]
        role: memhub_govern::Role,
        #[arg(long, default_value = DEFAULT_TENANT)]
        tenant: String,
        /// The user a `user` key acts as.
        #[arg(long)]
        user: Option<String>,
        /// Comma-separated source systems the key is limited to (required for `service`).
        #[arg(long, value_delimiter = ',')]
        systems: Option<Vec<String>>,
        /// Comma-separated kinds the key is limited to.
        #[arg(long, value_delimiter = ',')]
        kinds: Option<Vec<String>>,
        /// Lifetime, e.g. 30d, 12h.
        #[arg(long)]
        expires: Option<String>,
        #[arg(long)]
        name: Option<String>,
        /// Let a service key read (within its systems).
        #[arg(long)]
        read: bool,
        /// Let an admin key act in every tenant (X-Memhub-Tenant).
        #[arg(long)]
        superadmin: bool,
    },
    /// List keys (never their secrets).
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a key by id (mh_...): refused from the next request on.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum AuditOp {
    /// Recompute the hash chain; exit 1 and name the first broken record if tampered.
    Verify,
    /// Print the latest records, oldest first (JSON lines).
    Tail {
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: usize,
        #[arg(long)]
        action: Option<String>,
        #[arg(long)]
        actor: Option<String>,
        /// Keep printing new records.
        #[arg(long)]
        follow: bool,
    },
}

fn load_config(cli: &Cli) -> Result<Config, String> {
    let mut config = Config::load(cli.config.as_deref()).map_err(|e| e.to_string())?;
    if let Some(d) = &cli.data_dir {
        config.data_dir = d.clone();
    }
    Ok(config)
}

fn init_logging(filter: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Logs go to stderr: stdout belongs to `mcp --stdio` and to `export`.
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down: draining requests and flushing the store");
}

/// The server-side embedder the configuration asks for, if any.
fn build_embedder(config: &Config) -> Result<Option<Arc<dyn Embedder>>, String> {
    let model_dir = config.model_dir();
    match config.embedder.kind {
        EmbedderKind::None => Ok(None),
        EmbedderKind::Auto if !model_dir.join("model.safetensors").is_file() => {
            tracing::info!(
                model_dir = %model_dir.display(),
                "no local encoder (run scripts/fetch-model.sh to install all-MiniLM-L6-v2): clients supply vectors; text-only search is keyword-only"
            );
            Ok(None)
        }
        EmbedderKind::Auto | EmbedderKind::Minilm => {
            let t = std::time::Instant::now();
            let encoder = MiniLmEncoder::load(&model_dir).map_err(|e| e.to_string())?;
            tracing::info!(model_dir = %model_dir.display(), ms = t.elapsed().as_millis() as u64, "local encoder all-MiniLM-L6-v2 loaded");
            Ok(Some(Arc::new(encoder)))
        }
        EmbedderKind::Openai => {
            let url = config
                .embedder
                .url
                .as_deref()
                .ok_or("embedder.kind = openai needs embedder.url (MEMHUB_EMBEDDER_URL)")?;
            let model = config
                .embedder
                .model
                .as_deref()
                .ok_or("embedder.kind = openai needs embedder.model (MEMHUB_EMBEDDER_MODEL)")?;
            let key = std::env::var(&config.embedder.api_key_env).ok();
            let e = OpenAiEmbedder::new(url, model, key, config.engine.embedding_dim).map_err(|e| e.to_string())?;
            Ok(Some(Arc::new(e)))
        }
    }
}

fn open_engine(config: &Config, mode: OpenMode) -> Result<Arc<Engine>, String> {
    let embedder = build_embedder(config)?;
    let engine = match config.storage.backend {
        StorageBackend::Sqlite => Engine::open_with(&config.data_dir, config.engine.clone(), mode, embedder),
        // The database is the truth; the data dir keeps this replica's derived indexes.
        StorageBackend::Postgres => {
            memhub_postgres::PostgresStore::connect(&config.storage.postgres).and_then(|store| {
                Engine::open_on(Box::new(store), &config.data_dir.join("index"), config.engine.clone(), embedder)
            })
        }
    };
    engine.map(Arc::new).map_err(|e| e.to_string())
}

fn progress(len: Option<u64>, what: &str) -> ProgressBar {
    let bar = match len {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

fn run(cli: Cli) -> Result<(), String> {
    let config = load_config(&cli)?;
    match cli.command {
        Command::Serve { addr, auth, log, embedder } => {
            let mut config = config;
            config.addr = addr.unwrap_or(config.addr);
            config.auth.mode = auth.unwrap_or(config.auth.mode);
            config.log = log.unwrap_or(config.log);
            embedder.apply(&mut config);
            init_logging(&config.log);
            let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
            rt.block_on(async move {
                let engine = open_engine(&config, OpenMode::ReadWrite)?;
                let state = AppState::new(engine.clone(), config.clone()).await.map_err(|e| e.to_string())?;
                let listener = tokio::net::TcpListener::bind(config.addr)
                    .await
                    .map_err(|e| format!("cannot listen on {}: {e}", config.addr))?;
                let local = listener.local_addr().map_err(|e| e.to_string())?;
                tracing::info!(addr = %local, data_dir = %config.data_dir.display(), "memhub listening (MCP at /mcp, REST at /v1)");
                let worker = EmbeddingWorker::start(engine.clone());
                // Replicas over one database: take the others' writes too.
                let follower = LogFollower::start(engine.clone());
                let served = memhub_server::serve(listener, state, shutdown_signal()).await;
                tokio::task::spawn_blocking(move || (worker.stop(), follower.stop())).await.map_err(|e| e.to_string())?;
                served.map_err(|e| e.to_string())
            })
        }
        Command::Mcp { stdio: _, embedder } => {
            let mut config = config;
            embedder.apply(&mut config);
            init_logging(&config.log);
            let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
            rt.block_on(async move {
                let engine = open_engine(&config, OpenMode::ReadWrite)?;
                let worker = EmbeddingWorker::start(engine.clone());
                let follower = LogFollower::start(engine.clone());
                let audit = Arc::new(memhub_server::open_audit(&config).map_err(|e| e.to_string())?);
                let caller = memhub_server::auth::Caller::local(&config.auth);
                let result = memhub_server::mcp::serve_stdio(engine.clone(), audit.clone(), caller)
                    .await
                    .map_err(|e| e.to_string());
                audit.close();
                tokio::task::spawn_blocking(move || (worker.stop(), follower.stop()))
                    .await
                    .map_err(|e| e.to_string())?;
                engine.checkpoint().map_err(|e| e.to_string())?;
                result
            })
        }
        Command::Import { file, batch } => {
            let engine = open_engine(&config, OpenMode::ReadWrite)?;
            let reader =
                std::io::BufReader::new(std::fs::File::open(&file).map_err(|e| format!("{}: {e}", file.display()))?);
            let size = std::fs::metadata(&file).map(|m| m.len()).ok();
            let bar = progress(size, "importing");
            let mut pending: Vec<Memory> = Vec::new();
            let mut total = memhub_engine::ImportReport::default();
            let mut flush = |pending: &mut Vec<Memory>| -> Result<(), String> {
                let r = engine.import(std::mem::take(pending)).map_err(|e| e.to_string())?;
                total.created += r.created;
                total.updated += r.updated;
                total.unchanged += r.unchanged;
                Ok(())
            };
            for (i, line) in reader.lines().enumerate() {
                let line = line.map_err(|e| format!("line {}: {e}", i + 1))?;
                bar.inc(line.len() as u64 + 1);
                if line.trim().is_empty() {
                    continue;
                }
                let m: Memory = serde_json::from_str(&line).map_err(|e| format!("line {}: {e}", i + 1))?;
                pending.push(m);
                if pending.len() >= batch.max(1) {
                    flush(&mut pending)?;
                }
            }
            flush(&mut pending)?;
            bar.finish_and_clear();
            println!("{}", serde_json::to_string(&total).map_err(|e| e.to_string())?);
            Ok(())
        }
        Command::Migrate { to } => migrate::migrate(&config, &to, &progress),
        Command::Export { out, tenant } => {
            let engine = open_engine(&config, OpenMode::ReadOnly)?;
            let sink: Box<dyn Write> = match &out {
                Some(p) => Box::new(std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()))?),
                None => Box::new(std::io::stdout().lock()),
            };
            let mut sink = BufWriter::new(sink);
            let total =
                engine.stats(&tenant.as_deref().unwrap_or(DEFAULT_TENANT).into()).map(|s| s.memories as u64).ok();
            let bar = progress(if tenant.is_some() { total } else { None }, "exporting");
            let n = engine
                .export(tenant.as_deref(), |m| {
                    serde_json::to_writer(&mut sink, &m).map_err(memhub_types::Error::internal)?;
                    sink.write_all(b"\n").map_err(memhub_types::Error::internal)?;
                    bar.inc(1);
                    Ok(())
                })
                .map_err(|e| e.to_string())?;
            sink.flush().map_err(|e| e.to_string())?;
            bar.finish_and_clear();
            eprintln!("exported {n} memories");
            Ok(())
        }
        Command::Search { query, limit, tenant, system_id, kind, json } => {
            let engine = open_engine(&config, OpenMode::ReadOnly)?;
            let req = SearchRequest {
                query,
                limit: Some(limit),
                filter: MemoryFilter { system_id, kind, ..Default::default() },
                ..Default::default()
            };
            let resp = engine.search(&tenant.as_str().into(), &req).map_err(|e| e.to_string())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&resp).map_err(|e| e.to_string())?);
            } else {
                for (i, hit) in resp.results.iter().enumerate() {
                    let text: String = hit.memory.content.chars().take(160).collect();
                    println!(
                        "{:>2}. [{:.3}] {} / {} ({}) {}",
                        i + 1,
                        hit.similarity,
                        hit.memory.system_id,
                        hit.memory.memory_id,
                        hit.memory.kind,
                        text.replace('\n', " ")
                    );
                }
                if resp.results.is_empty() {
                    println!("no results");
                }
            }
            Ok(())
        }
        Command::Bench { which } => bench::run(which, &config),
        Command::Keys { op } => keys(op, &config),
        Command::Audit { op } => audit(op, &config),
        Command::Sync(args) => {
            init_logging(&config.log);
            let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
            let (result, ok) = rt.block_on(sync::run(args));
            println!("{}", json(&result));
            if ok {
                Ok(())
            } else {
                Err(format!("sync failed: {}", result.errors.join("; ")))
            }
        }
        Command::Tier { op: TierOp::Run } => {
            let engine = open_engine(&config, OpenMode::ReadWrite)?;
            let report = engine.age_tiers().map_err(|e| e.to_string())?;
            println!("{}", json(&report));
            engine.checkpoint().map_err(|e| e.to_string())
        }
    }
}

fn keys(op: KeysOp, config: &Config) -> Result<(), String> {
    let store = memhub_server::open_keys(config).map_err(|e| e.to_string())?;
    match op {
        KeysOp::Create { role, tenant, user, systems, kinds, expires, name, read, superadmin } => {
            let spec = memhub_govern::NewKey {
                role,
                tenant,
                user_id: user,
                systems,
                kinds,
                expires_at: memhub_server::admin::expiry(expires.as_deref()).map_err(|e| e.to_string())?,
                name,
                can_read: read,
                superadmin,
            };
            let made = store.create(spec).map_err(|e| e.to_string())?;
            eprintln!("{}", json(&made.key));
            eprintln!("the secret below is shown once; only its hash is stored:");
            println!("{}", made.secret);
            Ok(())
        }
        KeysOp::List { tenant } => {
            for k in store.list(tenant.as_deref()).map_err(|e| e.to_string())? {
                println!("{}", json(&k));
            }
            Ok(())
        }
        KeysOp::Revoke { id } => {
            let k = store.revoke(&id, None).map_err(|e| e.to_string())?;
            println!("{}", json(&k));
            Ok(())
        }
    }
}

/// One JSON line.
fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn audit(op: AuditOp, config: &Config) -> Result<(), String> {
    let table = memhub_server::open_audit_table(config, true).map_err(|e| e.to_string())?;
    match op {
        AuditOp::Verify => {
            let report = memhub_govern::audit::verify(table.as_ref()).map_err(|e| e.to_string())?;
            println!("{}", serde_json::to_string(&report).map_err(|e| e.to_string())?);
            match report.first_broken {
                None => {
                    eprintln!("audit log intact: {} records, head {}", report.records, report.head);
                    Ok(())
                }
                Some((seq, why)) => Err(format!("audit log broken at record {seq}: {why}")),
            }
        }
        AuditOp::Tail { lines, action, actor, follow } => {
            let q = memhub_govern::AuditQuery { action, actor, limit: Some(lines.max(1)), ..Default::default() };
            let mut last = 0;
            loop {
                let mut records = memhub_govern::audit::query(table.as_ref(), &q).map_err(|e| e.to_string())?;
                records.reverse();
                let seen = last;
                for r in records.into_iter().filter(|r| r.seq > seen) {
                    last = r.seq;
                    println!("{}", serde_json::to_string(&r).map_err(|e| e.to_string())?);
                }
                if !follow {
                    return Ok(());
                }
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("memhub: {e}");
            ExitCode::FAILURE
        }
    }
}
