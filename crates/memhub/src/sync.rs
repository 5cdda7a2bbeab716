//! `memhub sync`: what a Session-Buddy-like system runs to send its memory
//! databases to a hub.
//!
//! - `cloud`: uploads `reflection.duckdb` (and `knowledge_graph.duckdb`) in
//!   Session-Buddy's layout (`{root}/{system_id}/uploads/{upload_id}/`, each file
//!   gzip-compressed whole under its own name, multipart in 5 MiB parts, then
//!   `manifest.json` last); the hub's pull worker ingests it.
//! - `http`: reads the rows itself and pushes them with the `batch_store_memories`
//!   MCP tool (and the graph with `create_entity` / `create_relation`).
//! - `auto`: cloud, and HTTP when the bucket fails.
//!
//! A state file (default `<db>.memhub-sync.json`) makes both incremental: cloud
//! skips files whose sha256 was already uploaded and resumes an interrupted upload
//! (files already in the bucket at the right size are not sent again); HTTP keeps
//! a hash per row id and table, so a second sync sends only new or changed rows.
//! The state is written after every acknowledged step, so a killed sync loses at
//! most the step in flight.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use memhub_ingest::session_buddy::{self, Manifest, ManifestFile};
use memhub_objects::{Bucket, BucketConfig};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SyncMethod {
    /// Cloud upload, falling back to HTTP when the bucket fails.
    Auto,
    /// Upload to the bucket only.
    Cloud,
    /// Push to the hub over HTTP only.
    Http,
}

#[derive(Debug, clap::Args)]
pub struct SyncArgs {
    /// The reflection database (conversations and reflections).
    #[arg(long)]
    db: PathBuf,
    /// The knowledge graph database.
    #[arg(long)]
    kg: Option<PathBuf>,
    /// This system's id (A-Z a-z 0-9 . _ -; a hostname is fine).
    #[arg(long)]
    system_id: String,
    /// The bucket the hub pulls from: s3://bucket/prefix, gs://..., az://..., file:///path.
    /// S3 endpoint and keys come from AWS_* variables or --bucket-option.
    #[arg(long)]
    bucket: Option<String>,
    /// A bucket option, e.g. aws_endpoint=http://127.0.0.1:9000 (repeatable).
    #[arg(long = "bucket-option", value_parser = key_value)]
    bucket_options: Vec<(String, String)>,
    /// The hub's address, e.g. http://hub:8682 (repeat for fallback endpoints).
    #[arg(long = "hub")]
    hubs: Vec<String>,
    /// API key (or JWT) for the hub.
    #[arg(long, env = "MEMHUB_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    #[arg(long, value_enum, default_value_t = SyncMethod::Auto)]
    method: SyncMethod,
    /// Memories per batch_store_memories call (at most 1000).
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// The state file (default: next to --db, `<db>.memhub-sync.json`).
    #[arg(long)]
    state: Option<PathBuf>,
    /// The prefix under which systems upload.
    #[arg(long, default_value = "systems")]
    root: String,
    /// Multipart part size in bytes.
    #[arg(long, default_value_t = 5 * 1024 * 1024)]
    part_size: usize,
    /// Retries of a failed bucket request.
    #[arg(long, default_value_t = 3)]
    bucket_retries: usize,
    /// Send everything, ignoring what the state file says was sent.
    #[arg(long)]
    full: bool,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

/// The JSON printed at the end.
#[derive(Debug, Default, Serialize)]
pub struct SyncResult {
    pub method: &'static str,
    pub success: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files_uploaded: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memories_uploaded: Option<u64>,
    pub bytes_transferred: u64,
    pub duration_seconds: f64,
    pub errors: Vec<String>,
    /// Cloud: the upload's id; absent when nothing changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload_id: Option<String>,
    /// Files or rows left out because they were sent before.
    pub unchanged: u64,
}

/// What was sent before (the state file).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct State {
    version: u32,
    system_id: String,
    /// Cloud: file name -> the sha256 of the local file last uploaded whole.
    uploaded: BTreeMap<String, String>,
    /// Cloud: an upload begun and not finished (resumed by the next run).
    pending: Option<Pending>,
    /// HTTP: table -> row id -> hash of the row as sent.
    rows: BTreeMap<String, BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pending {
    upload_id: String,
    /// File name -> sha256 of the local file this upload carries.
    files: BTreeMap<String, String>,
    /// Manifest entries of the files already in the bucket.
    done: Vec<ManifestFile>,
}

impl State {
    fn load(path: &Path, system_id: &str) -> Result<State, String> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let s: State = serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
                if s.system_id != system_id {
                    return Err(format!(
                        "{} is the state of system {:?}, not {system_id:?}: pass --state for another file",
                        path.display(),
                        s.system_id
                    ));
                }
                Ok(s)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(State { version: 1, system_id: system_id.into(), ..Default::default() })
            }
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Write atomically: a crash leaves the old state or the new one.
    fn save(&self, path: &Path) -> Result<(), String> {
        let tmp = path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec(self).expect("serializes"))?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| format!("{}: {e}", path.display()))
    }
}

pub async fn run(args: SyncArgs) -> (SyncResult, bool) {
    let started = Instant::now();
    let mut result = match sync(&args).await {
        Ok(r) => r,
        Err(e) => SyncResult { method: method_name(args.method), errors: vec![e], ..Default::default() },
    };
    result.duration_seconds = (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
    let ok = result.success;
    (result, ok)
}

fn method_name(m: SyncMethod) -> &'static str {
    match m {
        SyncMethod::Auto => "auto",
        SyncMethod::Cloud => "cloud",
        SyncMethod::Http => "http",
    }
}

async fn sync(args: &SyncArgs) -> Result<SyncResult, String> {
    memhub_ingest::layout::check_system_id(&args.system_id).map_err(|e| format!("--system-id: {e}"))?;
    for f in std::iter::once(&args.db).chain(args.kg.as_ref()) {
        if !f.is_file() {
            return Err(format!("{}: no such file", f.display()));
        }
    }
    if !(1..=1000).contains(&args.batch) {
        return Err("--batch: must be 1 to 1000".into());
    }
    let state_path = args.state.clone().unwrap_or_else(|| {
        let mut p = args.db.clone().into_os_string();
        p.push(".memhub-sync.json");
        PathBuf::from(p)
    });
    let mut state = State::load(&state_path, &args.system_id)?;
    let (cloud, http) = match args.method {
        SyncMethod::Auto => (args.bucket.is_some(), !args.hubs.is_empty()),
        SyncMethod::Cloud => (true, false),
        SyncMethod::Http => (false, true),
    };
    if cloud && args.bucket.is_none() {
        return Err("--method cloud needs --bucket".into());
    }
    if http && args.hubs.is_empty() {
        return Err("--method http needs --hub".into());
    }
    if !cloud && !http {
        return Err("give --bucket (cloud upload) and/or --hub (HTTP push)".into());
    }
    let mut errors = Vec::new();
    if cloud {
        match upload(args, &mut state, &state_path).await {
            Ok(r) => return Ok(r),
            Err(e) if http => {
                tracing::warn!(error = %e, "cloud upload failed; falling back to HTTP");
                errors.push(format!("cloud: {e}; fell back to http"));
            }
            Err(e) => return Err(format!("cloud: {e}")),
        }
    }
    let mut r = push(args, &mut state, &state_path).await?;
    errors.append(&mut r.errors);
    r.errors = errors;
    Ok(r)
}

/// Gzip `src` into `dst` (deterministic bytes: no name, mtime 0); returns the
/// compressed size and its sha256.
pub(crate) fn gzip_file(src: &Path, dst: &Path) -> Result<(u64, String), String> {
    struct Hashing<W> {
        inner: W,
        hash: Sha256,
        len: u64,
    }
    impl<W: Write> Write for Hashing<W> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let n = self.inner.write(buf)?;
            self.hash.update(&buf[..n]);
            self.len += n as u64;
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.inner.flush()
        }
    }
    let io = |e: std::io::Error| format!("{}: {e}", src.display());
    let out = Hashing {
        inner: std::io::BufWriter::new(std::fs::File::create(dst).map_err(io)?),
        hash: Sha256::new(),
        len: 0,
    };
    let mut gz = flate2::GzBuilder::new().mtime(0).write(out, flate2::Compression::fast());
    std::io::copy(&mut std::io::BufReader::new(std::fs::File::open(src).map_err(io)?), &mut gz).map_err(io)?;
    let mut out = gz.finish().map_err(io)?;
    out.flush().map_err(io)?;
    Ok((out.len, hex::encode(out.hash.finalize())))
}

async fn upload(args: &SyncArgs, state: &mut State, state_path: &Path) -> Result<SyncResult, String> {
    let config = BucketConfig {
        url: args.bucket.clone().unwrap_or_default(),
        options: args.bucket_options.iter().cloned().collect(),
        max_retries: args.bucket_retries,
        retry_timeout_seconds: 30,
    };
    let bucket = Bucket::open(&config).map_err(|e| e.to_string())?;
    let mut files = vec![("reflection.duckdb", args.db.clone())];
    files.extend(args.kg.clone().map(|kg| ("knowledge_graph.duckdb", kg)));
    let mut changed = BTreeMap::new();
    let mut result = SyncResult { method: "cloud", ..Default::default() };
    for (name, path) in &files {
        let sha = memhub_ingest::decode::sha256_file(path)?;
        if !args.full && state.uploaded.get(*name) == Some(&sha) {
            result.unchanged += 1;
        } else {
            changed.insert(name.to_string(), sha);
        }
    }
    if changed.is_empty() {
        result.success = true;
        result.files_uploaded = Some(0);
        return Ok(result);
    }
    // Resume the pending upload if it carries exactly these files; else start one.
    let pending = match state.pending.take() {
        Some(p) if p.files == changed => p,
        _ => Pending {
            upload_id: session_buddy::upload_id(chrono::Utc::now(), &args.system_id),
            files: changed.clone(),
            done: Vec::new(),
        },
    };
    state.pending = Some(pending.clone());
    state.save(state_path)?;
    let mut pending = pending;
    let dir = format!("{}/{}/uploads/{}", args.root.trim_matches('/'), args.system_id, pending.upload_id);
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut uploaded = 0;
    for (name, path) in &files {
        if !changed.contains_key(*name) {
            continue;
        }
        let key = format!("{dir}/{name}");
        let gz = tmp.path().join(name);
        let (size, checksum) = {
            let (path, gz) = (path.clone(), gz.clone());
            tokio::task::spawn_blocking(move || gzip_file(&path, &gz)).await.map_err(|e| e.to_string())??
        };
        let entry = ManifestFile {
            name: name.to_string(),
            path: Some(key.clone()),
            size_bytes: Some(size),
            compression: Some("gzip".into()),
            checksum: Some(checksum),
        };
        let already = pending.done.contains(&entry)
            && bucket.head(&key).await.map_err(|e| e.to_string())?.is_some_and(|o| o.size == size);
        if !already {
            let bar = crate::progress(Some(size), name);
            let sent = bucket.put_file(&key, &gz, args.part_size.max(5 * 1024 * 1024), |n| bar.inc(n)).await;
            bar.finish_and_clear();
            result.bytes_transferred += sent.map_err(|e| e.to_string())?;
            pending.done.retain(|f| f.name != entry.name);
            pending.done.push(entry);
            state.pending = Some(pending.clone());
            state.save(state_path)?;
        }
        uploaded += 1;
    }
    let manifest = Manifest {
        upload_id: pending.upload_id.clone(),
        system_id: args.system_id.clone(),
        timestamp: memhub_types::time::format_micros(memhub_types::time::now_micros()),
        files: pending.done.clone(),
        metadata: serde_json::json!({"uploader": "memhub sync", "version": env!("CARGO_PKG_VERSION")}),
    };
    let bytes = serde_json::to_vec_pretty(&manifest).expect("serializes");
    result.bytes_transferred += bytes.len() as u64;
    bucket.put(&format!("{dir}/manifest.json"), bytes.into()).await.map_err(|e| e.to_string())?;
    state.uploaded.extend(pending.files);
    state.pending = None;
    state.save(state_path)?;
    result.success = true;
    result.files_uploaded = Some(uploaded + 1);
    result.upload_id = Some(pending.upload_id);
    Ok(result)
}

#[cfg(not(feature = "duckdb"))]
async fn push(_: &SyncArgs, _: &mut State, _: &Path) -> Result<SyncResult, String> {
    Err("http: this memhub was built without the `duckdb` feature, so it cannot read the database to push \
         its rows; use --method cloud, or build with --features duckdb (see the README)"
        .into())
}

#[cfg(feature = "duckdb")]
use http::push;

/// The HTTP push: needs the DuckDB reader to read rows on this side.
#[cfg(feature = "duckdb")]
mod http {
    use std::collections::BTreeSet;
    use std::path::Path;

    use memhub_ingest::Row;
    use serde_json::Value;

    use super::{State, SyncArgs, SyncResult};

    pub async fn push(args: &SyncArgs, state: &mut State, state_path: &Path) -> Result<SyncResult, String> {
        let hubs: Vec<&str> = args.hubs.iter().map(String::as_str).collect();
        let mut client = memhub_client::Client::new(&hubs).map_err(|e| e.to_string())?;
        if let Some(key) = &args.api_key {
            client = client.api_key(key.clone());
        }
        let mut result = SyncResult { method: "http", memories_uploaded: Some(0), ..Default::default() };
        if args.full {
            state.rows.clear();
        }
        // The reader runs on a blocking thread and hands over batches; two in flight
        // at most, so memory stays bounded.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Row>>(2);
        let (db, system, batch) = (args.db.clone(), args.system_id.clone(), args.batch);
        let reader = tokio::task::spawn_blocking(move || {
            memhub_ingest::duckdb::read_reflection(
                &db,
                &system,
                memhub_engine::EngineConfig::default().embedding_dim,
                batch,
                |rows| tx.blocking_send(rows).map_err(|_| "stopped".to_string()),
            )
        });
        let bar = crate::progress(None, "memories");
        let mut failure = None;
        while let Some(rows) = rx.recv().await {
            let table = rows[0].source.as_str().to_string();
            let sent = state.rows.entry(table.clone()).or_default();
            let todo: Vec<&Row> = rows.iter().filter(|r| sent.get(&r.row_id) != Some(&r.hash)).collect();
            result.unchanged += (rows.len() - todo.len()) as u64;
            if todo.is_empty() {
                continue;
            }
            let mut items = Vec::with_capacity(todo.len());
            for r in &todo {
                match &r.memory {
                    Ok(m) => items.push(akosha_item(&r.row_id, m)),
                    Err(e) => result.errors.push(format!("{table}: row {}: {e}", r.row_id)),
                }
            }
            result.bytes_transferred += items.iter().map(|i| i.to_string().len() as u64).sum::<u64>();
            match client.batch_store_memories(&items).await {
                Ok(out) => {
                    let failed: BTreeSet<&str> = out.errors.iter().filter_map(|e| e["memory_id"].as_str()).collect();
                    for e in out.errors.iter().take(20usize.saturating_sub(result.errors.len())) {
                        result.errors.push(format!("{table}: {e}"));
                    }
                    for r in todo.iter().filter(|r| !failed.contains(r.row_id.as_str())) {
                        sent.insert(r.row_id.clone(), r.hash.clone());
                    }
                    let stored = out.stored as u64;
                    *result.memories_uploaded.get_or_insert(0) += stored;
                    bar.inc(stored);
                    state.save(state_path)?;
                }
                Err(e) => {
                    failure = Some(e.to_string());
                    break;
                }
            }
        }
        drop(rx);
        bar.finish_and_clear();
        let read = reader.await.map_err(|e| e.to_string())?;
        if let Some(e) = failure {
            result.errors.push(format!("http: {e}"));
            return Ok(result);
        }
        read?;
        if let Some(kg) = &args.kg {
            push_graph(&client, kg, args, state, &mut result).await?;
            state.save(state_path)?;
        }
        result.success = result.errors.is_empty();
        Ok(result)
    }

    /// A row as a `batch_store_memories` item: the hub maps `metadata.type` to the
    /// kind, `source` to the system, and the kind's declared keys to attributes.
    fn akosha_item(row_id: &str, m: &memhub_types::NewMemory) -> Value {
        let mut metadata = m.metadata.clone().unwrap_or_default();
        if let Some(Value::Object(attrs)) = &m.attributes {
            metadata.extend(attrs.clone());
        }
        let text = |s: &Option<String>| s.clone().map_or(Value::Null, Value::String);
        metadata.insert("type".into(), text(&m.kind));
        metadata.insert("source".into(), text(&m.system_id));
        let fields = [
            ("user_id", &m.user_id),
            ("agent_id", &m.agent_id),
            ("session_id", &m.session_id),
            ("project", &m.project),
        ];
        for (k, v) in fields {
            if v.is_some() {
                metadata.insert(k.into(), text(v));
            }
        }
        if let Some(t) = m.created_at {
            metadata.insert("created_at".into(), Value::String(memhub_types::time::format_micros(t)));
        }
        if !m.tags.is_empty() {
            metadata.insert("tags".into(), serde_json::json!(m.tags));
        }
        let mut item = serde_json::json!({"memory_id": row_id, "text": m.content, "metadata": metadata});
        if let Some(e) = &m.embedding {
            item["embedding"] = serde_json::json!(e);
        }
        item
    }

    async fn push_graph(
        client: &memhub_client::Client,
        kg: &Path,
        args: &SyncArgs,
        state: &mut State,
        result: &mut SyncResult,
    ) -> Result<(), String> {
        let (kg, system) = (kg.to_path_buf(), args.system_id.clone());
        let graph = tokio::task::spawn_blocking(move || memhub_ingest::duckdb::read_knowledge_graph(&kg, &system))
            .await
            .map_err(|e| e.to_string())??;
        let calls = graph
            .entities
            .into_iter()
            .map(|(id, h, e)| ("kg_entities", "create_entity", id, h, serde_json::to_value(e)))
            .chain(
                graph
                    .relations
                    .into_iter()
                    .map(|(id, h, r)| ("kg_relationships", "create_relation", id, h, serde_json::to_value(r))),
            );
        for (table, tool, id, hash, args) in calls {
            let sent = state.rows.entry(table.into()).or_default();
            if sent.get(&id) == Some(&hash) {
                result.unchanged += 1;
                continue;
            }
            let args = args.map_err(|e| e.to_string())?;
            match client.call_tool(tool, args).await {
                Ok(_) => {
                    sent.insert(id, hash);
                }
                Err(e) => result.errors.push(format!("{table} {id}: {e}")),
            }
        }
        Ok(())
    }
}
