//! The storage seam: [`MemoryStore`] owns every byte of the source of truth
//! (memories, versions, the knowledge graph, schemas, retention policies, the cold
//! catalog and the change log) and all of its SQL. The engine above it decides what
//! to write; a store decides how it is kept.
//!
//! Two rules make a second backend (many replicas over one PostgreSQL) fit without
//! touching the engine:
//! - Writes happen inside [`MemoryStore::write`], through the [`StoreTx`] it hands
//!   out: no database handle crosses the seam, and a backend may retry the work.
//! - Every mutation through a [`StoreTx`] appends one [`Change`] to the store's
//!   change log in the same transaction, numbered by the store. `write` returns
//!   them in commit order; they are the only way changes reach the derived indexes,
//!   the embedding queue, the metrics and the change feed.
//!
//! - Sequence numbers follow commit order: once a reader has seen change N, no
//!   change below N commits later. A replica that tails the log by `seq > last`
//!   therefore never skips one (a backend with concurrent writers enforces it; see
//!   the PostgreSQL store's write lock).
//!
//! [`SqliteStore`] is the embedded backend (one SQLite file, WAL, `synchronous=FULL`).

mod sqlite;

use std::collections::{BTreeMap, HashSet};

use std::sync::Arc;

use memhub_types::time::now_micros;
use memhub_types::{Change, ChangeOp, KindSchema, Memory, NewEntity, NewRelation, Result, RetentionPolicy, Tier};
use uuid::Uuid;

pub use sqlite::SqliteStore;

/// The change a mutation of memory `m` (at `row`, if it is in the store) logs, not
/// yet numbered (`seq` 0): every backend logs this, so the feed reads the same
/// everywhere. `keep` carries the memory along for the indexes. An erasure's
/// change keeps ids only: the client's key may say what was erased.
pub fn memory_change(op: ChangeOp, row: Option<i64>, m: &Memory, keep: bool) -> Change {
    Change {
        seq: 0,
        op,
        tenant: m.tenant.clone(),
        id: m.id,
        memory_id: (op != ChangeOp::Erased).then(|| m.memory_id.clone()),
        system_id: Some(m.system_id.clone()),
        kind: Some(m.kind.clone()),
        user_id: m.user_id.clone(),
        version: Some(m.version),
        at: now_micros(),
        row,
        memory: keep.then(|| Arc::new(m.clone())),
    }
}

/// The change an entity or relation upsert logs (`kind`: its type), not yet numbered.
pub fn graph_change(op: ChangeOp, tenant: &str, id: Uuid, kind: &str) -> Change {
    Change {
        seq: 0,
        op,
        tenant: tenant.into(),
        id,
        memory_id: None,
        system_id: None,
        kind: Some(kind.into()),
        user_id: None,
        version: None,
        at: now_micros(),
        row: None,
        memory: None,
    }
}

/// Whether to open a store for writing (the embedded store takes its data dir's
/// lock) or for reading only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    ReadWrite,
    ReadOnly,
}

/// A memory's metadata as the filter table is built from it (no content, no vector).
#[derive(Debug, Clone, PartialEq)]
pub struct MetaRow {
    pub row: i64,
    pub tenant: String,
    pub system_id: String,
    pub kind: String,
    pub user_id: Option<String>,
    pub agent_id: Option<String>,
    pub session_id: Option<String>,
    pub project: Option<String>,
    pub tags: Vec<String>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub content_hash: String,
    /// It has a vector of the model the indexes were asked about.
    pub has_vector: bool,
    pub tier: Tier,
}

/// A memory changed since an index's checkpoint: what it holds now, or `None` when
/// it left the store.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangedRow {
    pub row: i64,
    pub now: Option<RowText>,
}

/// The content and vector of a memory, for catching up the text and vector indexes.
#[derive(Debug, Clone, PartialEq)]
pub struct RowText {
    pub content: String,
    /// `(vector, model)`.
    pub embedding: Option<(Vec<f32>, String)>,
}

/// Totals of one tenant that only the store knows.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TenantTotals {
    pub history_versions: i64,
    pub entities: i64,
    pub relations: i64,
}

/// A cold memory as the catalog knows it (enough to decide a purge without reading its file).
#[derive(Debug, Clone, PartialEq)]
pub struct ColdEntry {
    pub id: Uuid,
    pub tenant: String,
    pub system_id: String,
    pub kind: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
}

/// Cold memories of one `(system, kind, user)` group of a tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct ColdGroup {
    pub system_id: String,
    pub kind: String,
    pub user_id: Option<String>,
    pub memories: usize,
}

/// The source of truth. Thread-safe; reads may run while a write commits.
pub trait MemoryStore: Send + Sync {
    /// Where the store is, for logs and errors (never credentials).
    fn describe(&self) -> String;
    /// Whether writes are refused (a read-only open).
    fn read_only(&self) -> bool;
    /// The store's identity, made once: a persisted index names it, so an index
    /// directory copied beside another store is rebuilt, not trusted.
    fn store_id(&self) -> Result<String>;
    /// Bytes the store takes on disk (0 when it cannot tell).
    fn disk_bytes(&self) -> u64;
    /// Whether other processes write this store too (replicas over one database):
    /// the engine then follows the change log for the changes it did not make.
    fn shared(&self) -> bool {
        false
    }
    /// Whether this process should run the jobs that must run once per store (the
    /// pull worker, tier aging, the retention purge). The embedded store has one
    /// process: always. A shared store elects one process at a time and answers
    /// `false` elsewhere until that one goes away; each call may try to take over.
    fn leads(&self) -> bool {
        true
    }
    /// Block until a change after `seen` may have committed, or `timeout` passes. A
    /// wake-up, not a promise: the caller reads the log to see what is there.
    fn wait_for_changes(&self, seen: i64, timeout: std::time::Duration) {
        let _ = seen;
        std::thread::sleep(timeout);
    }

    /// Run `work` in one transaction and commit it durably before returning. On
    /// error nothing of it is written. Returns the changes the work made, with their
    /// sequence numbers, in order. `work` may be called again if the backend
    /// retries the transaction.
    fn write(&self, work: &mut dyn FnMut(&mut dyn StoreTx) -> Result<()>) -> Result<Vec<Change>>;
    /// Rewrite the store without deleted data (erasure: nothing removed survives in its files).
    fn compact(&self) -> Result<()>;
    /// Flush buffered state into the main files (graceful shutdown).
    fn checkpoint(&self) -> Result<()>;

    // --- memories ---------------------------------------------------------------
    /// `(row, memory)` by server id within a tenant.
    fn memory_by_id(&self, tenant: &str, id: &Uuid) -> Result<Option<(i64, Memory)>>;
    /// Memories of a tenant with this client key (`system_id` optional), at most `limit`.
    fn memories_by_memory_id(
        &self,
        tenant: &str,
        system_id: Option<&str>,
        memory_id: &str,
        limit: usize,
    ) -> Result<Vec<Memory>>;
    /// Memories by row, in the order asked for (missing ones skipped).
    fn memories_by_row(&self, rows: &[i64]) -> Result<Vec<(i64, Memory)>>;
    /// The superseded versions of a memory, newest first.
    fn history(&self, tenant: &str, id: &Uuid) -> Result<Vec<Memory>>;
    /// Call `f` for every memory in the store (of `tenant`, or all), oldest write first.
    fn each_memory(&self, tenant: Option<&str>, f: &mut dyn FnMut(Memory) -> Result<()>) -> Result<usize>;
    fn tenant_totals(&self, tenant: &str) -> Result<TenantTotals>;

    // --- feeding the derived indexes and the change feed ---------------------------
    /// Call `f` with the metadata of every memory in the store; `has_vector` says
    /// whether it has a vector of `model`.
    fn each_meta(&self, model: &str, f: &mut dyn FnMut(MetaRow) -> Result<()>) -> Result<()>;
    /// Call `f` for every memory changed after change `since` (`None`: every memory
    /// in the store), once each, with what it holds now.
    fn changed_since(&self, since: Option<i64>, f: &mut dyn FnMut(ChangedRow) -> Result<()>) -> Result<()>;
    /// The last change's sequence number (0 when none).
    fn last_change(&self) -> Result<i64>;
    /// Changes after `after`, oldest first, at most `limit`.
    fn changes_after(&self, after: i64, limit: usize) -> Result<Vec<Change>>;
    /// The highest sequence number pruned from the log (0 when none was): a reader
    /// that last saw an older one has missed changes.
    fn pruned_through(&self) -> Result<i64>;
    /// Drop log entries committed before `before` (µs); returns how many.
    fn prune_changes(&self, before: i64) -> Result<usize>;

    // --- schemas and retention ----------------------------------------------------
    /// Schemas registered at run time (built-ins live in code), by kind and version.
    fn schemas(&self) -> Result<Vec<KindSchema>>;
    /// Retention policies set through the API, every tenant.
    fn retention_policies(&self) -> Result<Vec<RetentionPolicy>>;
    /// Every knowledge-graph entity, with its tenant (for copying a store).
    fn each_entity(&self, f: &mut dyn FnMut(&str, NewEntity) -> Result<()>) -> Result<()>;
    /// Every knowledge-graph relation, with its tenant (for copying a store).
    fn each_relation(&self, f: &mut dyn FnMut(&str, NewRelation) -> Result<()>) -> Result<()>;

    // --- the cold catalog: the only truth about which cold memories exist ---------
    /// Ids of cold memories with these `(tenant, system_id, memory_id)` keys.
    fn cold_ids_by_key(&self, keys: &[(&str, &str, &str)]) -> Result<Vec<Uuid>>;
    /// Ids of cold memories of a tenant with this client key, at most `limit`.
    fn cold_ids_by_memory_id(
        &self,
        tenant: &str,
        system_id: Option<&str>,
        memory_id: &str,
        limit: usize,
    ) -> Result<Vec<Uuid>>;
    /// The file holding cold memory `id` of `tenant`.
    fn cold_file_of(&self, tenant: &str, id: &Uuid) -> Result<Option<String>>;
    /// The files holding these cold memories (any tenant), with which of them each holds.
    fn cold_files_of(&self, ids: &[Uuid]) -> Result<BTreeMap<String, HashSet<Uuid>>>;
    /// Every cold memory's catalog entry (the purge picks from these).
    fn cold_entries(&self) -> Result<Vec<ColdEntry>>;
    /// `(path, system_id)` of cold files that may hold memories of `tenant` (all:
    /// `None`), `system_id`, created in `[since, until)`, oldest first.
    fn cold_files(
        &self,
        tenant: Option<&str>,
        system_id: Option<&str>,
        since: Option<i64>,
        until: Option<i64>,
    ) -> Result<Vec<(String, String)>>;
    /// `(path, rows)` of cold files with fewer than `rows` memories, by path.
    fn cold_small_files(&self, rows: usize) -> Result<Vec<(String, usize)>>;
    /// Every cataloged file.
    fn cold_paths(&self) -> Result<HashSet<String>>;
    /// `(memories, bytes)` in the cold tier, every tenant.
    fn cold_totals(&self) -> Result<(u64, u64)>;
    /// A tenant's cold memories grouped by system, kind and user, and its cold bytes.
    fn cold_groups(&self, tenant: &str) -> Result<(Vec<ColdGroup>, u64)>;
}

/// One open write transaction. Each mutation logs its [`Change`].
pub trait StoreTx {
    /// `(row, memory)` with this key, if it is in the store.
    fn find_by_key(&mut self, tenant: &str, system_id: &str, memory_id: &str) -> Result<Option<(i64, Memory)>>;
    /// `(row, memory)` by server id within a tenant.
    fn find_by_id(&mut self, tenant: &str, id: &Uuid) -> Result<Option<(i64, Memory)>>;
    fn find_by_row(&mut self, row: i64) -> Result<Option<Memory>>;
    /// Whether a cold memory has this key (a write must thaw it first).
    fn cold_has_key(&mut self, tenant: &str, system_id: &str, memory_id: &str) -> Result<bool>;
    /// [`find_by_key`](Self::find_by_key) of many keys `(tenant, system_id,
    /// memory_id)`, answered in their order. A store with a round trip per
    /// statement answers in one.
    fn find_by_keys(&mut self, keys: &[(&str, &str, &str)]) -> Result<Vec<Option<(i64, Memory)>>> {
        keys.iter().map(|(t, s, m)| self.find_by_key(t, s, m)).collect()
    }
    /// Whether any of these keys is a cold memory's ([`cold_has_key`](Self::cold_has_key)).
    fn cold_has_any_key(&mut self, keys: &[(&str, &str, &str)]) -> Result<bool> {
        for (t, s, m) in keys {
            if self.cold_has_key(t, s, m)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Insert a memory (`op`: [`ChangeOp::Created`], or [`ChangeOp::Thawed`] when it
    /// comes back from a cold file); returns its row.
    fn insert(&mut self, m: &Memory, op: ChangeOp) -> Result<i64>;
    /// [`insert`](Self::insert) many memories of distinct keys, none in the store;
    /// their rows, in their order (a store with a round trip per statement inserts
    /// them, and logs their changes, in a few statements).
    fn insert_many(&mut self, ms: &[&Memory], op: ChangeOp) -> Result<Vec<i64>> {
        ms.iter().map(|m| self.insert(m, op)).collect()
    }
    /// Keep the current version of `row` in history, then overwrite it with `m`
    /// ([`ChangeOp::Updated`]).
    fn replace(&mut self, row: i64, m: &Memory, superseded_at: i64) -> Result<()>;
    /// Move `row` from tier `from` to `to` ([`ChangeOp::Moved`]); the memory as moved,
    /// or `None` when it was no longer in `from`.
    fn set_tier(&mut self, row: i64, from: Tier, to: Tier) -> Result<Option<Memory>>;
    /// Store a server-made vector on `row` if its content is still `m`'s
    /// ([`ChangeOp::Embedded`]); whether it was.
    fn set_embedding(&mut self, row: i64, m: &Memory) -> Result<bool>;
    /// Remove `row` (which holds `m`) and its history; `op` says why (deleted,
    /// purged, erased). Returns the history versions removed.
    fn remove(&mut self, row: i64, m: &Memory, op: ChangeOp) -> Result<usize>;
    /// Remove `row` from the store but keep its history: it now lives in a cold file
    /// (cataloged in the same transaction; [`ChangeOp::Frozen`]).
    fn archive(&mut self, row: i64, m: &Memory) -> Result<()>;
    /// A cold memory taken out of its file for good: remove its history (`op`:
    /// purged, erased or deleted).
    fn discard_cold(&mut self, m: &Memory, op: ChangeOp) -> Result<usize>;

    /// Catalog a new cold file and the memories in it.
    fn catalog_file(&mut self, path: &str, memories: &[Memory], bytes: u64) -> Result<()>;
    /// Drop a file and its memories from the catalog; whether it was cataloged.
    fn uncatalog_file(&mut self, path: &str) -> Result<bool>;

    fn add_schema(&mut self, schema: &KindSchema) -> Result<()>;
    /// Replace `tenant`'s own retention policies.
    fn set_retention(&mut self, tenant: &str, policies: &[RetentionPolicy]) -> Result<()>;
    /// Insert or update an entity keyed by `(tenant, name, entity_type)`; returns its id.
    fn upsert_entity(&mut self, tenant: &str, e: &NewEntity, now: i64) -> Result<Uuid>;
    /// Insert or update a relation keyed by `(tenant, from, to, type)`; returns its id.
    fn upsert_relation(&mut self, tenant: &str, r: &NewRelation, now: i64) -> Result<Uuid>;
}
