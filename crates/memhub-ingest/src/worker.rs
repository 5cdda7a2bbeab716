//! The worker: poll, pick uploads that need work, ingest them with bounded
//! concurrency, record outcomes in the ledger.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use memhub_engine::Engine;
use memhub_objects::{Bucket, BucketConfig};
use memhub_types::memory::IngestionMethod;
use memhub_types::time::{format_micros, now_micros};
use memhub_types::Scope;
use serde::{Deserialize, Serialize};

use crate::layout::{find_uploads, Layout, Upload};
use crate::ledger::{Ledger, Outcome, UploadStatus};
use crate::telemetry;
use crate::{akosha, decode, session_buddy, Row, Source};

/// `[ingest]`: where uploads are and how often to look.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// The bucket systems upload to; without one the worker does not run.
    pub bucket: Option<BucketConfig>,
    /// The prefix (in the bucket) under which systems upload.
    pub root: String,
    /// Seconds between polls.
    pub interval_seconds: u64,
    /// The tenant ingested memories belong to.
    pub tenant: String,
    /// Uploads ingested at once.
    pub concurrency: usize,
    /// Rows per write transaction.
    pub batch: usize,
    /// Longest wait before retrying a failed upload.
    pub max_backoff_seconds: u64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            bucket: None,
            root: "systems".into(),
            interval_seconds: 30,
            tenant: memhub_types::DEFAULT_TENANT.into(),
            concurrency: 2,
            batch: 500,
            max_backoff_seconds: 3600,
        }
    }
}

/// What one poll did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PollReport {
    pub uploads_seen: usize,
    pub ingested: usize,
    pub failed: usize,
    /// Keys refused for a bad system or upload id.
    pub refused: Vec<String>,
    pub rows_written: u64,
}

/// What ingesting one upload did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ingested {
    pub rows_read: u64,
    /// Rows new or changed since the last ingest, written through the engine.
    pub rows_written: u64,
    /// Rows the engine refused (invalid); not retried.
    pub rows_refused: u64,
    pub first_refusal: Option<String>,
}

/// `GET /v1/ingest/status`.
#[derive(Debug, Clone, Serialize)]
pub struct IngestStatus {
    pub enabled: bool,
    pub bucket: String,
    pub root: String,
    pub interval_seconds: u64,
    pub last_poll_at: Option<String>,
    pub last_poll: Option<PollReport>,
    pub failed: usize,
    pub uploads: Vec<UploadStatus>,
}

pub struct PullWorker {
    engine: Arc<Engine>,
    bucket: Bucket,
    ledger: Arc<Ledger>,
    config: IngestConfig,
    work_dir: PathBuf,
    last: Mutex<Option<(i64, PollReport)>>,
    /// One poll at a time (the timer and `POST /v1/ingest/run` may overlap).
    polling: tokio::sync::Mutex<()>,
}

impl PullWorker {
    /// A worker for `config.bucket` keeping its temporary files in `data_dir` and its
    /// ledger in `ingest.db` there.
    pub fn open(engine: Arc<Engine>, config: IngestConfig, data_dir: &Path) -> Result<Option<PullWorker>, String> {
        Self::open_with(engine, config, data_dir, || Ledger::in_data_dir(data_dir))
    }

    /// Like [`open`](Self::open), with the ledger `ledger` opens (only when a bucket is configured).
    pub fn open_with(
        engine: Arc<Engine>,
        config: IngestConfig,
        data_dir: &Path,
        ledger: impl FnOnce() -> Result<Ledger, String>,
    ) -> Result<Option<PullWorker>, String> {
        let Some(bucket_config) = &config.bucket else { return Ok(None) };
        let bucket = Bucket::open(bucket_config).map_err(|e| e.to_string())?;
        let work_dir = data_dir.join("ingest-tmp");
        std::fs::create_dir_all(&work_dir).map_err(|e| format!("{}: {e}", work_dir.display()))?;
        let ledger = Arc::new(ledger()?);
        Ok(Some(PullWorker {
            engine,
            bucket,
            ledger,
            config,
            work_dir,
            last: Mutex::new(None),
            polling: tokio::sync::Mutex::new(()),
        }))
    }

    pub fn config(&self) -> &IngestConfig {
        &self.config
    }

    /// Poll every `interval_seconds` until the task is aborted.
    pub fn spawn(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(self.config.interval_seconds.max(1)));
            loop {
                tick.tick().await;
                // Replicas over one database: only the elected one polls.
                let engine = self.engine.clone();
                if !tokio::task::spawn_blocking(move || engine.leads()).await.unwrap_or(false) {
                    continue;
                }
                let report = self.poll().await;
                if report.failed > 0 || !report.refused.is_empty() {
                    tracing::warn!(?report, "ingest poll had failures; see GET /v1/ingest/status");
                }
            }
        })
    }

    /// List the bucket and ingest what needs it. Never fails as a whole: listing
    /// errors and per-upload errors are reported and recorded.
    pub async fn poll(&self) -> PollReport {
        let _one = self.polling.lock().await;
        let mut report = PollReport::default();
        let now = now_micros();
        match self.bucket.list(&self.config.root).await {
            Err(e) => {
                tracing::error!(bucket = self.bucket.url(), error = %e, "cannot list the ingest bucket");
                report.failed = 1;
                telemetry::poll(false, 0, None);
            }
            Ok(objects) => {
                let (uploads, refused) = find_uploads(&objects, &self.config.root);
                for (key, why) in &refused {
                    tracing::error!(key, "{why}");
                }
                report.refused = refused.into_iter().map(|(k, why)| format!("{k}: {why}")).collect();
                report.uploads_seen = uploads.len();
                let mut todo = Vec::new();
                for u in uploads {
                    match self.ledger.needs_work(&u.key, Some(&ledger_etag(&u)), u.size, now) {
                        Ok(true) => todo.push(u),
                        Ok(false) => {}
                        Err(e) => tracing::error!(key = u.key, error = %e, "ledger read failed"),
                    }
                }
                use futures::StreamExt;
                let results: Vec<(Upload, Result<Ingested, String>)> =
                    futures::stream::iter(todo.into_iter().map(|u| async move {
                        let r = self.ingest(&u).await;
                        (u, r)
                    }))
                    .buffer_unordered(self.config.concurrency.max(1))
                    .collect()
                    .await;
                for (u, result) in results {
                    let etag = ledger_etag(&u);
                    let outcome = Outcome {
                        key: &u.key,
                        system_id: &u.system_id,
                        layout: u.layout.as_str(),
                        etag: Some(&etag),
                        size: u.size,
                    };
                    telemetry::upload(u.layout.as_str(), result.as_ref().map_err(|_| ()));
                    let recorded = match result {
                        Ok(done) => {
                            report.ingested += 1;
                            report.rows_written += done.rows_written;
                            tracing::info!(key = u.key, ?done, "upload ingested");
                            self.ledger.done(&outcome, &done, now_micros())
                        }
                        Err(e) => {
                            report.failed += 1;
                            tracing::error!(key = u.key, error = %e, "upload failed; will retry");
                            self.ledger.failed(&outcome, &e, now_micros(), self.config.max_backoff_seconds).map(|_| ())
                        }
                    };
                    if let Err(e) = recorded {
                        tracing::error!(key = u.key, error = %e, "cannot record the upload's outcome");
                    }
                }
                telemetry::poll(true, report.refused.len(), self.ledger.failing().ok());
            }
        }
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((now, report.clone()));
        report
    }

    /// Ingest one upload.
    async fn ingest(&self, u: &Upload) -> Result<Ingested, String> {
        let tmp = tempfile::tempdir_in(&self.work_dir).map_err(|e| e.to_string())?;
        let mut writer = RowWriter {
            engine: self.engine.clone(),
            ledger: self.ledger.clone(),
            scope: Scope::tenant(&self.config.tenant),
            system: u.system_id.clone(),
            batch: self.config.batch.max(1),
            done: Ingested::default(),
        };
        let dim = self.engine.config().embedding_dim;
        // Reading and the engine's writes (which fsync) run off the async threads.
        let blocking = |f: Box<dyn FnOnce() -> Result<Ingested, String> + Send>| async move {
            tokio::task::spawn_blocking(f).await.map_err(|e| e.to_string())?
        };
        match u.layout {
            Layout::Akosha => {
                let manifest_bytes = self.bucket.get(&u.key).await.map_err(|e| e.to_string())?;
                let manifest: akosha::Manifest =
                    serde_json::from_slice(&manifest_bytes).map_err(|e| format!("manifest.json: {e}"))?;
                let file = tmp.path().join("memories");
                let key = format!("{}/{}", u.dir, manifest.memories_file());
                self.bucket.get_to_file(&key, &file).await.map_err(|e| e.to_string())?;
                let (system, engine) = (u.system_id.clone(), self.engine.clone());
                blocking(Box::new(move || {
                    writer.write(akosha::read(&file, &manifest, &system, &engine)?)?;
                    Ok(writer.done)
                }))
                .await
            }
            Layout::Seed => {
                let file = self.fetch_database(&u.key, tmp.path(), "reflection.duckdb", None).await?;
                blocking(Box::new(move || read_databases(&[file], writer, dim))).await
            }
            Layout::SessionBuddy => {
                let bytes = self.bucket.get(&u.key).await.map_err(|e| e.to_string())?;
                let manifest =
                    session_buddy::Manifest::parse(&bytes, &u.system_id, u.upload_id.as_deref().unwrap_or_default())?;
                let mut files = Vec::new();
                for name in session_buddy::FILES {
                    let Some(entry) = manifest.files.iter().find(|f| f.name == name) else { continue };
                    let key = format!("{}/{name}", u.dir);
                    files.push(self.fetch_database(&key, tmp.path(), name, Some(entry)).await?);
                }
                blocking(Box::new(move || read_databases(&files, writer, dim))).await
            }
        }
    }

    /// Download a database file to `dir` (streamed), check it against its manifest
    /// entry, and undo its compression (found by magic bytes). Returns its path.
    async fn fetch_database(
        &self,
        key: &str,
        dir: &Path,
        name: &str,
        entry: Option<&session_buddy::ManifestFile>,
    ) -> Result<PathBuf, String> {
        let raw = dir.join(format!("{name}.download"));
        self.bucket.get_to_file(key, &raw).await.map_err(|e| e.to_string())?;
        let out = dir.join(name);
        let entry = entry.cloned();
        let name = name.to_string();
        tokio::task::spawn_blocking(move || {
            let declared = match entry.as_ref().and_then(|e| e.compression.as_deref()) {
                Some(d) => Some(
                    decode::Compression::named(d)
                        .ok_or_else(|| format!("{name}: unknown compression {d:?} in manifest.json"))?,
                ),
                None => None,
            };
            let checksum = entry.as_ref().and_then(|e| e.checksum.as_deref());
            let found = decode::verify(&raw, declared, checksum).map_err(|e| format!("{name}: {e}"))?;
            if found == decode::Compression::None {
                std::fs::rename(&raw, &out).map_err(|e| format!("{name}: {e}"))?;
            } else {
                decode::decompress_into(&raw, &out).map_err(|e| format!("{name}: cannot decompress: {e}"))?;
                let _ = std::fs::remove_file(&raw);
            }
            Ok(out)
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// The worker's state for `GET /v1/ingest/status`.
    pub fn status(&self) -> Result<IngestStatus, String> {
        let uploads = self.ledger.uploads(200)?;
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Ok(IngestStatus {
            enabled: true,
            bucket: self.bucket.url().to_string(),
            root: self.config.root.clone(),
            interval_seconds: self.config.interval_seconds,
            last_poll_at: last.as_ref().map(|(t, _)| format_micros(*t)),
            last_poll: last.map(|(_, r)| r),
            failed: self.ledger.failing()?,
            uploads,
        })
    }
}

/// Writes an upload's rows: only those whose hash changed since the last ingest,
/// `batch` per engine transaction, each remembered in the ledger once durable.
pub(crate) struct RowWriter {
    engine: Arc<Engine>,
    ledger: Arc<Ledger>,
    scope: Scope,
    system: String,
    batch: usize,
    pub done: Ingested,
}

impl RowWriter {
    pub fn write(&mut self, rows: Vec<Row>) -> Result<(), String> {
        self.done.rows_read += rows.len() as u64;
        for chunk in rows.chunks(self.batch) {
            let Some(todo_ids) = self.changed(chunk.iter().map(|r| (r.source, r.row_id.as_str(), r.hash.as_str())))?
            else {
                continue;
            };
            let (mut todo, mut items): (Vec<&Row>, Vec<_>) = (Vec::new(), Vec::new());
            for row in chunk.iter().filter(|r| todo_ids.contains(&r.row_id)) {
                match &row.memory {
                    Ok(m) => {
                        todo.push(row);
                        items.push(m.clone());
                    }
                    Err(e) => self.refused(&row.row_id, e),
                }
            }
            let results =
                self.engine.store_batch(&self.scope, items, IngestionMethod::CloudPull).map_err(|e| e.to_string())?;
            let mut written = Vec::new();
            for (row, result) in todo.iter().zip(results) {
                match result {
                    Ok(_) => written.push((row.row_id.as_str(), row.hash.as_str())),
                    Err(e) => self.refused(&row.row_id, e),
                }
            }
            self.done.rows_written += written.len() as u64;
            self.ledger.remember(&self.system, chunk[0].source.as_str(), &written)?;
        }
        Ok(())
    }

    /// The ids among `rows` (all of one source) whose hash changed; `None` if none did.
    fn changed<'a>(
        &self,
        rows: impl Iterator<Item = (Source, &'a str, &'a str)>,
    ) -> Result<Option<std::collections::HashSet<String>>, String> {
        let rows: Vec<_> = rows.collect();
        let Some((source, _, _)) = rows.first() else { return Ok(None) };
        let keys: Vec<(&str, &str)> = rows.iter().map(|(_, id, hash)| (*id, *hash)).collect();
        let same = self.ledger.unchanged(&self.system, source.as_str(), &keys)?;
        let todo: std::collections::HashSet<String> =
            keys.iter().filter(|(id, _)| !same.contains(*id)).map(|(id, _)| id.to_string()).collect();
        Ok((!todo.is_empty()).then_some(todo))
    }

    fn refused(&mut self, row_id: &str, e: impl std::fmt::Display) {
        self.done.rows_refused += 1;
        self.done.first_refusal.get_or_insert_with(|| format!("row {row_id}: {e}"));
    }

    /// Upsert changed entities and relations of a knowledge graph.
    #[cfg(feature = "duckdb")]
    fn write_graph(&mut self, graph: crate::duckdb::Graph) -> Result<(), String> {
        let tenant = self.scope.tenant.clone();
        self.upsert(Source::Entities, &graph.entities, |engine, e| engine.store_entity(&tenant, e.clone()).map(drop))?;
        self.upsert(Source::Relations, &graph.relations, |engine, r| {
            engine.store_relation(&tenant, r.clone()).map(drop)
        })
    }

    /// Store the `(id, hash, item)`s whose hash changed, one by one, and remember them.
    #[cfg(feature = "duckdb")]
    fn upsert<T>(
        &mut self,
        source: Source,
        items: &[(String, String, T)],
        store: impl Fn(&Engine, &T) -> memhub_types::Result<()>,
    ) -> Result<(), String> {
        self.done.rows_read += items.len() as u64;
        let todo = self.changed(items.iter().map(|(id, h, _)| (source, id.as_str(), h.as_str())))?.unwrap_or_default();
        let mut written = Vec::new();
        for (id, hash, item) in items.iter().filter(|(id, _, _)| todo.contains(id)) {
            match store(&self.engine, item) {
                Ok(()) => written.push((id.as_str(), hash.as_str())),
                Err(err) => self.refused(id, err),
            }
        }
        self.done.rows_written += written.len() as u64;
        self.ledger.remember(&self.system, source.as_str(), &written)
    }
}

/// Read downloaded database files (`reflection.duckdb`, `knowledge_graph.duckdb`,
/// told apart by name) through `writer`.
#[cfg(feature = "duckdb")]
fn read_databases(files: &[PathBuf], mut writer: RowWriter, dim: usize) -> Result<Ingested, String> {
    for file in files {
        if file.file_name().is_some_and(|n| n == "knowledge_graph.duckdb") {
            writer.write_graph(crate::duckdb::read_knowledge_graph(file, &writer.system.clone())?)?;
        } else {
            let (system, batch) = (writer.system.clone(), writer.batch);
            crate::duckdb::read_reflection(file, &system, dim, batch, |rows| writer.write(rows))?;
        }
    }
    Ok(writer.done)
}

#[cfg(not(feature = "duckdb"))]
fn read_databases(_: &[PathBuf], _: RowWriter, _: usize) -> Result<Ingested, String> {
    Err("this memhub was built without the `duckdb` feature, so it cannot read reflection.duckdb / \
         knowledge_graph.duckdb uploads; the upload is kept and retried, so a build with the feature \
         (`cargo build --release --features duckdb`, see docs/operations.md) will ingest it"
        .into())
}

/// What the ledger remembers an upload's version by: its ETag and the mapping
/// version, so a release that maps rows differently reads every upload once more.
fn ledger_etag(u: &Upload) -> String {
    format!("{}#mapping{}", u.etag.as_deref().unwrap_or(""), crate::MAPPING_VERSION)
}
