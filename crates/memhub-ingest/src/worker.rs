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
use crate::{akosha, Row};

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
    /// A worker for `config.bucket` keeping its ledger and temporary files in `data_dir`.
    pub fn open(engine: Arc<Engine>, config: IngestConfig, data_dir: &Path) -> Result<Option<PullWorker>, String> {
        let Some(bucket_config) = &config.bucket else { return Ok(None) };
        let bucket = Bucket::open(bucket_config).map_err(|e| e.to_string())?;
        let work_dir = data_dir.join("ingest-tmp");
        std::fs::create_dir_all(&work_dir).map_err(|e| format!("{}: {e}", work_dir.display()))?;
        let ledger = Arc::new(Ledger::open(&data_dir.join("ingest.db"))?);
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
                    match self.ledger.needs_work(&u.key, u.etag.as_deref(), u.size, now) {
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
                    let outcome = Outcome {
                        key: &u.key,
                        system_id: &u.system_id,
                        layout: u.layout.as_str(),
                        etag: u.etag.as_deref(),
                        size: u.size,
                    };
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
            }
        }
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((now, report.clone()));
        report
    }

    /// Ingest one upload: `(rows read, rows written, rows refused, first refusal)`.
    async fn ingest(&self, u: &Upload) -> Result<Ingested, String> {
        let tmp = tempfile::tempdir_in(&self.work_dir).map_err(|e| e.to_string())?;
        let rows = match u.layout {
            Layout::Akosha => {
                let manifest_bytes = self.bucket.get(&u.key).await.map_err(|e| e.to_string())?;
                let manifest: akosha::Manifest =
                    serde_json::from_slice(&manifest_bytes).map_err(|e| format!("manifest.json: {e}"))?;
                let file = tmp.path().join("memories");
                let key = format!("{}/{}", u.dir, manifest.memories_file());
                self.bucket.get_to_file(&key, &file).await.map_err(|e| e.to_string())?;
                let (system, dim) = (u.system_id.clone(), self.engine.config().embedding_dim);
                tokio::task::spawn_blocking(move || akosha::read(&file, &manifest, &system, dim))
                    .await
                    .map_err(|e| e.to_string())??
            }
            Layout::Seed | Layout::SessionBuddy => {
                return Err(format!(
                    "{:?} uploads (reflection.duckdb) are not readable by this memhub yet: the DuckDB reader is \
                     not implemented; the upload is kept and retried, so a build that reads it will ingest it",
                    u.layout
                ))
            }
        };
        let engine = self.engine.clone();
        let (tenant, batch) = (self.config.tenant.clone(), self.config.batch.max(1));
        let ledger = self.ledger.clone();
        let system = u.system_id.clone();
        // The engine's writes fsync: off the async threads.
        tokio::task::spawn_blocking(move || write_rows(&engine, &ledger, &tenant, &system, rows, batch))
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
            failed: uploads.iter().filter(|u| u.state == "failed").count(),
            uploads,
        })
    }
}

/// Write the rows whose hash changed, `batch` at a time; remember each written row.
fn write_rows(
    engine: &Engine,
    ledger: &Ledger,
    tenant: &str,
    system: &str,
    rows: Vec<Row>,
    batch: usize,
) -> Result<Ingested, String> {
    let mut done = Ingested { rows_read: rows.len() as u64, ..Default::default() };
    let scope = Scope::tenant(tenant);
    for chunk in rows.chunks(batch) {
        let source = chunk[0].source.as_str();
        let keys: Vec<(&str, &str)> = chunk.iter().map(|r| (r.row_id.as_str(), r.hash.as_str())).collect();
        let same = ledger.unchanged(system, source, &keys)?;
        let todo: Vec<&Row> = chunk.iter().filter(|r| !same.contains(&r.row_id)).collect();
        if todo.is_empty() {
            continue;
        }
        let items = todo.iter().map(|r| r.memory.clone()).collect();
        let results = engine.store_batch(&scope, items, IngestionMethod::CloudPull).map_err(|e| e.to_string())?;
        let mut written = Vec::new();
        for (row, result) in todo.iter().zip(results) {
            match result {
                Ok(_) => written.push((row.row_id.as_str(), row.hash.as_str())),
                Err(e) => {
                    done.rows_refused += 1;
                    done.first_refusal.get_or_insert_with(|| format!("row {}: {e}", row.row_id));
                }
            }
        }
        done.rows_written += written.len() as u64;
        ledger.remember(system, source, &written)?;
    }
    Ok(done)
}
