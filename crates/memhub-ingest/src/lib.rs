//! The pull ingestion worker: systems upload their memory databases to a bucket
//! (S3, R2, GCS, Azure, a local directory) and the hub collects them.
//!
//! Each poll lists the bucket's `root` prefix, finds uploads in the three accepted
//! layouts ([`layout`]), skips those the [`ledger::Ledger`] has already taken at the
//! same ETag and size, and ingests the rest a few at a time: each file is streamed
//! to a temporary file (never whole in memory), decompressed by its magic bytes
//! ([`decode`]), read into rows, and only rows whose content hash changed since the
//! last ingest are written, through the engine's batch write
//! (`ingestion_method = cloud_pull`). One upload's failure never blocks another;
//! failed uploads are retried with exponential backoff and listed in the status.

pub mod akosha;
pub mod decode;
#[cfg(feature = "duckdb")]
pub mod duckdb;
pub mod layout;
pub mod ledger;
pub mod session_buddy;
pub mod telemetry;
pub mod worker;

pub use worker::{IngestConfig, IngestStatus, PollReport, PullWorker};

/// The version of the mapping from upload rows to memories ([`akosha::to_memory`],
/// the DuckDB reader). It is part of every row hash and upload version in the
/// ledger: bump it when a row would map to another memory, and every upload and row
/// is read and written once more (an unchanged memory is a no-op), so memories
/// stored by an older mapping, or rows it refused, are put right.
pub const MAPPING_VERSION: u32 = 2;

/// A non-empty string field of an upload's metadata (`user_id`, `source`, ...): how
/// both the Akosha mapping and the DuckDB reader read one.
pub(crate) fn meta_text(metadata: &serde_json::Map<String, serde_json::Value>, key: &str) -> Option<String> {
    metadata.get(key).and_then(serde_json::Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned)
}

/// The strings of a JSON array (tags); anything else has none.
pub(crate) fn strings(v: &serde_json::Value) -> Vec<String> {
    match v {
        serde_json::Value::Array(items) => {
            items.iter().filter_map(serde_json::Value::as_str).map(str::to_owned).collect()
        }
        _ => Vec::new(),
    }
}

/// Whether this build reads DuckDB files (the `duckdb` cargo feature).
pub const READS_DUCKDB: bool = cfg!(feature = "duckdb");

use memhub_types::NewMemory;

/// Where a row came from inside an upload (rows are remembered per source).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Akosha,
    Conversations,
    Reflections,
    Entities,
    Relations,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Akosha => "akosha",
            Source::Conversations => "conversations",
            Source::Reflections => "reflections",
            Source::Entities => "kg_entities",
            Source::Relations => "kg_relationships",
        }
    }
}

/// One row of an upload, mapped to a memory (or the reason it cannot be one), with
/// a hash of its source data.
#[derive(Debug, Clone)]
pub struct Row {
    pub source: Source,
    pub row_id: String,
    pub hash: String,
    pub memory: Result<NewMemory, memhub_types::Error>,
}
