//! The memhub engine: the durable store (the single source of truth), the derived
//! indexes, and search. No transport code lives here; `memhub-server` calls it.
//!
//! ```no_run
//! use memhub_engine::{Engine, EngineConfig, OpenMode};
//! use memhub_types::{NewMemory, SearchRequest, memory::IngestionMethod};
//!
//! let engine = Engine::open("/tmp/memhub".as_ref(), EngineConfig::default(), OpenMode::ReadWrite)?;
//! engine.store_memory(&"default".into(), NewMemory { content: "deploys happen on Tuesdays".into(), ..Default::default() }, IngestionMethod::Rest)?;
//! let found = engine.search(&"default".into(), &SearchRequest { query: "deploy tuesday".into(), ..Default::default() })?;
//! # Ok::<(), memhub_types::Error>(())
//! ```

mod cold;
mod embedding;
mod engine;
pub mod follow;
pub mod index;
mod prepare;
pub mod query_vectors;
pub mod store;
pub mod telemetry;
mod tiers;

pub use embedding::EmbeddingWorker;
pub use engine::{Access, Engine, ImportReport, Page, Removed, Stats, Stored, DEFAULT_SEMANTIC_RATIO};
pub use follow::LogFollower;
pub use prepare::{content_hash, limits};
pub use store::{MemoryStore, OpenMode, SqliteStore, StoreTx};
pub use tiers::{TierAges, TierConfig, TierReport, TierStats};

/// Engine settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Dimension every stored and query embedding must have.
    pub embedding_dim: usize,
    /// Model name recorded for client-supplied embeddings that name none.
    pub embedding_model: String,
    /// Longest `content` accepted, in bytes.
    pub max_content_bytes: usize,
    /// Most memories in one batch.
    pub max_batch: usize,
    /// Largest `metadata` (and `attributes`) as JSON, in bytes; nesting is limited to 16 levels.
    pub max_metadata_bytes: usize,
    /// Vector graph parameters (changing them rebuilds the graph on next open).
    pub hnsw: index::HnswParams,
    /// `0`: `delete` removes a memory and its history for real. Otherwise `delete`
    /// only expires it (hidden at once, history kept) and the purge job removes it
    /// this many seconds later.
    pub soft_delete_seconds: u64,
    /// Retention policies from the config file (`[[engine.retention]]`); tenants add
    /// their own through the API.
    pub retention: Vec<memhub_types::RetentionPolicy>,
    /// Tier boundaries and the cold tier's bucket (`[engine.tiers]`).
    pub tiers: TierConfig,
    /// The change log behind the change feed (`[engine.events]`).
    pub events: EventsConfig,
    /// Concurrent store writes that arrive while a transaction commits share the
    /// next one (each acknowledged once it is durable). Off: one transaction each.
    pub group_commit: bool,
    /// Query vectors kept in this process for reuse (least recently used go first;
    /// ~1.5 KB each at 384-d). 0: every text query is embedded again.
    pub query_cache_entries: usize,
    /// Search hits' memories kept in this process when the store is shared with
    /// other processes (PostgreSQL), emptied by the change stream (~2 KB each at
    /// 384-d). 0: every hit is read from the database. The embedded store keeps none.
    pub hit_cache_entries: usize,
}

/// How long the change log keeps what it tells (`[engine.events]`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// Changes older than this are pruned by the purge job (default 7 days); a
    /// feed reader asking for an older one is told to list again (`reset`).
    pub retention_seconds: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig { retention_seconds: 7 * 86_400 }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            embedding_dim: 384,
            embedding_model: "all-MiniLM-L6-v2".into(),
            max_content_bytes: 1024 * 1024,
            max_batch: 1000,
            max_metadata_bytes: 64 * 1024,
            hnsw: index::HnswParams::default(),
            soft_delete_seconds: 0,
            retention: Vec::new(),
            tiers: TierConfig::default(),
            events: EventsConfig::default(),
            group_commit: true,
            query_cache_entries: 4096,
            hit_cache_entries: 16_384,
        }
    }
}
