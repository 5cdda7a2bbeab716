//! Tiers: memories age from hot to warm to cold by `created_at`.
//!
//! - Hot and warm memories live in the store (`memories.tier`); the indexes keep
//!   hot vectors in an f16 graph and warm ones in an i8 graph; both are searched
//!   by default.
//! - Cold memories live in Parquet files in object storage, partitioned
//!   `tenant=…/system_id=…/year=…/month=…/`. The store keeps a catalog
//!   (`cold_files`, `cold_memories`): **the catalog is the truth** about which cold
//!   memories exist and where. Every row of a cataloged file is live; a file is
//!   never changed in place, only replaced by a new file and a catalog swap in one
//!   transaction. An object the catalog does not name is an orphan (a crash between
//!   upload and commit, or between commit and delete) and is swept by the next run.
//!
//! A move (freeze, thaw, removal) holds `ColdTier::lock`, writes objects first,
//! then commits the catalog and the `memories` change in one store transaction, then
//! deletes replaced objects: at every moment a reader sees each memory in exactly
//! one tier, and a crash at any point neither loses nor duplicates one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use memhub_objects::{BlockingBucket, BucketConfig, ObjectError};
use memhub_types::time::now_micros;
use memhub_types::{Error, ErrorCode, Memory, MemoryFilter, Result, Scope, Tier};
use rusqlite::{params, OptionalExtension, Transaction};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::engine::Engine;
use crate::index::IndexSizes;
use crate::store::{self, storage};

const DAY_MICROS: f64 = 86_400.0 * 1e6;

/// Tier boundaries and the cold tier's bucket (`[engine.tiers]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TierConfig {
    /// Memories older than this (by `created_at`) leave hot for warm.
    pub hot_days: f64,
    /// Memories older than this leave warm for cold (when a cold bucket is set).
    pub warm_days: f64,
    /// Boundaries per kind, overriding the two above.
    pub kinds: BTreeMap<String, TierAges>,
    /// Where cold Parquet files go. Without one, memories stop at warm.
    pub cold: Option<BucketConfig>,
    /// Most memories per cold file (and per freeze step).
    pub file_rows: usize,
    /// How often the server runs the aging job (`0` = only on demand).
    pub interval_seconds: u64,
}

impl Default for TierConfig {
    fn default() -> Self {
        TierConfig {
            hot_days: 7.0,
            warm_days: 90.0,
            kinds: BTreeMap::new(),
            cold: None,
            file_rows: 10_000,
            interval_seconds: 3600,
        }
    }
}

/// A kind's own boundaries; what it leaves out comes from [`TierConfig`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TierAges {
    pub hot_days: Option<f64>,
    pub warm_days: Option<f64>,
}

impl TierConfig {
    /// Check the boundaries make sense (hot before warm, positive).
    pub fn validate(&self) -> Result<()> {
        let bad = |field: String, why: &str| Err(Error::field(ErrorCode::InvalidField, field, why));
        let mut all = vec![("engine.tiers".to_string(), self.hot_days, self.warm_days)];
        for (kind, ages) in &self.kinds {
            all.push((
                format!("engine.tiers.kinds.{kind}"),
                ages.hot_days.unwrap_or(self.hot_days),
                ages.warm_days.unwrap_or(self.warm_days),
            ));
        }
        for (field, hot, warm) in all {
            if !(hot.is_finite() && hot >= 0.0) {
                return bad(format!("{field}.hot_days"), "must be a number of days ≥ 0");
            }
            if !(warm.is_finite() && warm >= hot) {
                return bad(format!("{field}.warm_days"), "must be a number of days ≥ hot_days");
            }
        }
        if self.file_rows == 0 {
            return bad("engine.tiers.file_rows".into(), "must be at least 1");
        }
        Ok(())
    }

    /// The tier a memory of `kind` created at `created_at` belongs in at `now`.
    pub fn tier_for(&self, kind: &str, created_at: i64, now: i64) -> Tier {
        let ages = self.kinds.get(kind);
        let hot = ages.and_then(|a| a.hot_days).unwrap_or(self.hot_days);
        let warm = ages.and_then(|a| a.warm_days).unwrap_or(self.warm_days);
        let age_days = (now - created_at) as f64 / DAY_MICROS;
        if age_days > warm && self.cold.is_some() {
            Tier::Cold
        } else if age_days > hot {
            Tier::Warm
        } else {
            Tier::Hot
        }
    }
}

/// What one aging run did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TierReport {
    pub to_warm: usize,
    pub to_cold: usize,
    pub files_written: usize,
    /// Objects no catalog entry named (left by a crash), deleted.
    pub orphans_removed: usize,
}

/// Counts and bytes of one tier.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TierStats {
    pub memories: usize,
    /// Hot and warm: the tier's vector graph in memory. Cold: the Parquet files.
    pub bytes: u64,
}

/// A decoded cold file, shared by concurrent readers.
type ColdFile = Arc<Vec<Memory>>;

/// The cold tier: a bucket, the lock every move holds, and recently read files
/// (files never change, so a cached one is never stale).
pub(crate) struct ColdTier {
    pub(crate) bucket: BlockingBucket,
    lock: Mutex<()>,
    cache: Mutex<(HashMap<String, ColdFile>, Vec<String>)>,
}

/// Decoded files kept in memory for repeated cold reads.
const CACHED_FILES: usize = 32;

fn object_error(e: ObjectError) -> Error {
    Error::new(ErrorCode::ObjectStoreUnavailable, e.to_string())
}

/// A partition value as a path segment: `[A-Za-z0-9._-]` as is, the rest %-encoded
/// (and `.` / `..` entirely, so a value never names a directory step).
fn partition_value(s: &str) -> String {
    let dots_only = s == "." || s == "..";
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' if !dots_only => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The partition (folder) of a memory's cold file.
fn partition(m: &Memory) -> String {
    let t = chrono::DateTime::from_timestamp_micros(m.created_at).unwrap_or_default();
    format!(
        "tenant={}/system_id={}/year={}/month={:02}",
        partition_value(&m.tenant),
        partition_value(&m.system_id),
        chrono::Datelike::year(&t),
        chrono::Datelike::month(&t),
    )
}

/// The object key of a new cold file in the partition of `first`.
fn cold_key(first: &Memory) -> String {
    format!("{}/part-{}.parquet", partition(first), Uuid::now_v7())
}

impl ColdTier {
    pub(crate) fn open(config: &BucketConfig) -> Result<ColdTier> {
        Ok(ColdTier {
            bucket: BlockingBucket::open(config).map_err(object_error)?,
            lock: Mutex::new(()),
            cache: Mutex::new((HashMap::new(), Vec::new())),
        })
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Read cold files (cached, or fetched up to 8 at a time).
    fn read(&self, paths: &[String]) -> Result<Vec<(String, ColdFile)>> {
        let mut out = Vec::with_capacity(paths.len());
        let mut missing = Vec::new();
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            for p in paths {
                match cache.0.get(p) {
                    Some(f) => out.push((p.clone(), f.clone())),
                    None => missing.push(p.clone()),
                }
            }
        }
        for (path, bytes) in missing.iter().zip(self.bucket.get_many(&missing)) {
            let memories = memhub_objects::parquet::decode(bytes.map_err(object_error)?).map_err(object_error)?;
            let file: ColdFile = Arc::new(memories);
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if cache.1.len() >= CACHED_FILES {
                let old = cache.1.remove(0);
                cache.0.remove(&old);
            }
            cache.0.insert(path.clone(), file.clone());
            cache.1.push(path.clone());
            out.push((path.clone(), file));
        }
        Ok(out)
    }

    fn write(&self, key: &str, memories: &[Memory]) -> Result<u64> {
        let bytes = memhub_objects::parquet::encode(memories).map_err(object_error)?;
        let size = bytes.len() as u64;
        self.bucket.put(key, Bytes::from(bytes)).map_err(object_error)?;
        Ok(size)
    }

    fn delete(&self, key: &str) {
        if let Err(e) = self.bucket.delete(key) {
            tracing::warn!(key, error = %e, "could not delete a replaced cold file; the next aging run sweeps it");
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.0.remove(key);
        cache.1.retain(|k| k != key);
    }
}

/// Record a new cold file and its memories in the catalog.
fn catalog_file(tx: &Transaction<'_>, key: &str, memories: &[Memory], bytes: u64) -> Result<()> {
    let first = &memories[0];
    let min = memories.iter().map(|m| m.created_at).min().unwrap_or(0);
    let max = memories.iter().map(|m| m.created_at).max().unwrap_or(0);
    tx.execute(
        "INSERT INTO cold_files (path, tenant, system_id, min_created, max_created, rows, bytes, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![key, first.tenant, first.system_id, min, max, memories.len() as i64, bytes as i64, now_micros()],
    )
    .map_err(storage)?;
    let mut st = tx
        .prepare_cached(
            "INSERT OR REPLACE INTO cold_memories (id, tenant, system_id, memory_id, kind, user_id, created_at, \
             expires_at, file) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .map_err(storage)?;
    for m in memories {
        st.execute(params![
            m.id.to_string(),
            m.tenant,
            m.system_id,
            m.memory_id,
            m.kind,
            m.user_id,
            m.created_at,
            m.expires_at,
            key
        ])
        .map_err(storage)?;
    }
    Ok(())
}

/// What a cold removal does with the memories it takes out of their files.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Taken {
    /// Back into the store as warm memories (a write needs them there).
    Restore,
    /// Gone, with their history (purge, erasure, delete).
    Discard,
}

impl Engine {
    pub(crate) fn cold(&self) -> Option<&ColdTier> {
        self.cold.as_ref()
    }

    fn tiers(&self) -> &TierConfig {
        &self.config().tiers
    }

    /// Run the aging job now: move memories whose age passed their kind's boundary
    /// (hot → warm, warm → cold), then sweep orphaned cold objects.
    pub fn age_tiers(&self) -> Result<TierReport> {
        self.age_tiers_at(now_micros())
    }

    /// [`Engine::age_tiers`] with an explicit clock (tests and benchmarks).
    pub fn age_tiers_at(&self, now: i64) -> Result<TierReport> {
        let mut report = TierReport::default();
        // A hot memory old enough for cold is listed for both moves; `freeze` takes
        // only those that are warm by then.
        let mut to_warm = Vec::new();
        let mut to_cold: BTreeMap<(String, String), Vec<i64>> = BTreeMap::new();
        {
            let state = self.indexes().read();
            for (id, d) in state.filters.docs() {
                let (tenant, system, kind) = state.filters.names(id);
                let target = self.tiers().tier_for(kind, d.created_at, now);
                if d.tier == Tier::Hot && target != Tier::Hot {
                    to_warm.push(i64::from(id));
                }
                if target == Tier::Cold {
                    to_cold.entry((tenant.to_string(), system.to_string())).or_default().push(i64::from(id));
                }
            }
        }
        for chunk in to_warm.chunks(1000) {
            report.to_warm += self.move_between(chunk, Tier::Hot, Tier::Warm)?;
        }
        if let Some(cold) = self.cold() {
            let _moving = cold.guard();
            report.orphans_removed = self.sweep_orphans(cold)?;
            for seqs in to_cold.into_values() {
                for chunk in seqs.chunks(self.tiers().file_rows) {
                    let (moved, files) = self.freeze(cold, chunk)?;
                    report.to_cold += moved;
                    report.files_written += files;
                }
            }
        }
        if report != TierReport::default() {
            tracing::info!(?report, "tiers aged");
        }
        Ok(report)
    }

    /// Move memories between hot and warm (same store, other vector graph).
    fn move_between(&self, seqs: &[i64], from: Tier, to: Tier) -> Result<usize> {
        let (moved, _) = self.store().write_then(
            |tx| {
                let mut moved = Vec::new();
                for &seq in seqs {
                    if store::set_tier(tx, seq, from, to)? {
                        moved.push(seq);
                    }
                }
                let loaded = store::load_by_seq(tx, &moved)?;
                Ok((moved.len(), loaded))
            },
            |(_, loaded), change| {
                for (seq, m) in loaded {
                    if let Err(e) = self.indexes().apply_moved(*seq, m, change) {
                        tracing::error!(error = %e, "index update failed; restart to catch up");
                    }
                }
            },
        )?;
        Ok(moved)
    }

    /// Write warm memories `seqs` (one tenant and system) to cold files by month,
    /// then, in one transaction, catalog them and remove them from the store, if
    /// none changed meanwhile. Returns `(memories moved, files written)`.
    fn freeze(&self, cold: &ColdTier, seqs: &[i64]) -> Result<(usize, usize)> {
        let loaded: Vec<(i64, Memory)> = self
            .store()
            .read(|c| store::load_by_seq(c, seqs))?
            .into_iter()
            .filter(|(_, m)| m.tier == Tier::Warm)
            .collect();
        let mut months: BTreeMap<String, Vec<(i64, Memory)>> = BTreeMap::new();
        for (seq, mut m) in loaded {
            m.tier = Tier::Cold;
            months.entry(partition(&m)).or_default().push((seq, m));
        }
        let (mut moved, mut files) = (0, 0);
        for mut group in months.into_values() {
            group.sort_by_key(|(_, m)| m.created_at);
            let memories: Vec<Memory> = group.iter().map(|(_, m)| m.clone()).collect();
            let key = cold_key(&memories[0]);
            let bytes = cold.write(&key, &memories)?;
            let committed = self.store().write_then(
                |tx| {
                    // Every memory must still be the version that was written out.
                    for (seq, m) in &group {
                        let now: Option<(u32, String)> = tx
                            .prepare_cached("SELECT version, tier FROM memories WHERE seq = ?1")
                            .and_then(|mut st| st.query_row(params![seq], |r| Ok((r.get(0)?, r.get(1)?))).optional())
                            .map_err(storage)?;
                        if now != Some((m.version, Tier::Warm.as_str().to_string())) {
                            return Ok(false);
                        }
                    }
                    catalog_file(tx, &key, &memories, bytes)?;
                    for (seq, _) in &group {
                        store::archive_memory(tx, *seq)?;
                    }
                    Ok(true)
                },
                |committed, change| {
                    if *committed {
                        let gone: Vec<(i64, Option<&Memory>)> = group.iter().map(|(s, _)| (*s, None)).collect();
                        self.apply(&gone, change);
                    }
                },
            )?;
            if committed {
                moved += group.len();
                files += 1;
            } else {
                // Changed while being written out: retried by the next run.
                cold.delete(&key);
            }
        }
        Ok((moved, files))
    }

    /// Delete objects under the bucket that the catalog does not name.
    fn sweep_orphans(&self, cold: &ColdTier) -> Result<usize> {
        let listed = cold.bucket.list("").map_err(object_error)?;
        let known: HashSet<String> = self.store().read(|c| {
            let mut st = c.prepare("SELECT path FROM cold_files").map_err(storage)?;
            let rows = st.query_map([], |r| r.get::<_, String>(0)).map_err(storage)?;
            rows.collect::<rusqlite::Result<HashSet<_>>>().map_err(storage)
        })?;
        let mut removed = 0;
        for o in listed.into_iter().filter(|o| o.key.ends_with(".parquet") && !known.contains(&o.key)) {
            cold.delete(&o.key);
            removed += 1;
        }
        Ok(removed)
    }

    /// Take cold memories `ids` out of their files: each affected file is replaced
    /// by one without them (or dropped when nothing is left), and the memories are
    /// restored into the store as warm or discarded with their history.
    fn take_cold(&self, cold: &ColdTier, ids: &[Uuid], taken: Taken) -> Result<Vec<Memory>> {
        let by_file: BTreeMap<String, HashSet<Uuid>> = self.store().read(|c| {
            let mut st = c.prepare_cached("SELECT file FROM cold_memories WHERE id = ?1").map_err(storage)?;
            let mut out: BTreeMap<String, HashSet<Uuid>> = BTreeMap::new();
            for id in ids {
                if let Some(file) =
                    st.query_row(params![id.to_string()], |r| r.get::<_, String>(0)).optional().map_err(storage)?
                {
                    out.entry(file).or_default().insert(*id);
                }
            }
            Ok(out)
        })?;
        let mut all_taken = Vec::new();
        for (file, ids) in by_file {
            let [(_, memories)]: [(String, ColdFile); 1] =
                cold.read(std::slice::from_ref(&file))?.try_into().map_err(|_| Error::internal("one file"))?;
            let (out, kept): (Vec<Memory>, Vec<Memory>) = memories.iter().cloned().partition(|m| ids.contains(&m.id));
            let replacement = match kept.first() {
                Some(first) => {
                    let key = cold_key(first);
                    let bytes = cold.write(&key, &kept)?;
                    Some((key, bytes))
                }
                None => None,
            };
            let restored = self.store().write_then(
                |tx| {
                    tx.execute("DELETE FROM cold_memories WHERE file = ?1", params![file]).map_err(storage)?;
                    tx.execute("DELETE FROM cold_files WHERE path = ?1", params![file]).map_err(storage)?;
                    if let Some((key, bytes)) = &replacement {
                        catalog_file(tx, key, &kept, *bytes)?;
                    }
                    let mut restored = Vec::new();
                    for m in &out {
                        match taken {
                            Taken::Restore => {
                                let m = Memory { tier: Tier::Warm, ..m.clone() };
                                restored.push((store::insert_memory(tx, &m)?, m));
                            }
                            Taken::Discard => {
                                tx.execute("DELETE FROM memory_history WHERE id = ?1", params![m.id.to_string()])
                                    .map_err(storage)?;
                            }
                        }
                    }
                    Ok(restored)
                },
                |restored, change| {
                    let changes: Vec<(i64, Option<&Memory>)> = restored.iter().map(|(s, m)| (*s, Some(m))).collect();
                    self.apply(&changes, change);
                },
            )?;
            cold.delete(&file);
            all_taken.extend(match taken {
                Taken::Restore => restored.into_iter().map(|(_, m)| m).collect(),
                Taken::Discard => out,
            });
        }
        Ok(all_taken)
    }

    /// Bring cold memories with these keys back into the store (as warm) so a write
    /// can update them. Returns how many were thawed.
    pub(crate) fn thaw_keys(&self, keys: &[(&str, &str, &str)]) -> Result<usize> {
        let Some(cold) = self.cold() else { return Ok(0) };
        let _moving = cold.guard();
        let ids: Vec<Uuid> = self.store().read(|c| {
            let mut st = c
                .prepare_cached("SELECT id FROM cold_memories WHERE tenant = ?1 AND system_id = ?2 AND memory_id = ?3")
                .map_err(storage)?;
            let mut ids = Vec::new();
            for (t, s, m) in keys {
                if let Some(id) =
                    st.query_row(params![t, s, m], |r| r.get::<_, String>(0)).optional().map_err(storage)?
                {
                    ids.extend(Uuid::parse_str(&id).ok());
                }
            }
            Ok(ids)
        })?;
        if ids.is_empty() {
            return Ok(0);
        }
        Ok(self.take_cold(cold, &ids, Taken::Restore)?.len())
    }

    /// Bring the cold memory `id` back into the store; whether it was cold.
    pub(crate) fn thaw_id(&self, id: &Uuid) -> Result<bool> {
        let Some(cold) = self.cold() else { return Ok(false) };
        let _moving = cold.guard();
        Ok(!self.take_cold(cold, &[*id], Taken::Restore)?.is_empty())
    }

    /// Remove cold memories (any tenant) past their `expires_at` (at or before
    /// `expired_before`) or their kind's retention at `now`, with their history.
    /// Chosen from the catalog: no file is read unless it holds one.
    pub(crate) fn purge_cold(&self, now: i64, expired_before: i64) -> Result<usize> {
        let Some(cold) = self.cold() else { return Ok(0) };
        let _moving = cold.guard();
        let ids: Vec<Uuid> = self.store().read(|c| {
            let mut st = c
                .prepare("SELECT id, tenant, system_id, kind, created_at, expires_at FROM cold_memories")
                .map_err(storage)?;
            let mut rows = st.query([]).map_err(storage)?;
            let mut ids = Vec::new();
            while let Some(r) = rows.next().map_err(storage)? {
                let get = |i: usize| r.get::<_, String>(i).map_err(storage);
                let (created_at, expires_at): (i64, Option<i64>) =
                    (r.get(4).map_err(storage)?, r.get(5).map_err(storage)?);
                if expires_at.is_some_and(|t| t <= expired_before)
                    || self.past_retention(&get(1)?, &get(2)?, &get(3)?, created_at, now)
                {
                    ids.extend(Uuid::parse_str(&get(0)?).ok());
                }
            }
            Ok(ids)
        })?;
        if ids.is_empty() {
            return Ok(0);
        }
        Ok(self.take_cold(cold, &ids, Taken::Discard)?.len())
    }

    /// Remove cold memories of `scope` matching `filter` (expired ones included), with
    /// their history: the files the filter allows are read, matches taken out.
    pub(crate) fn erase_cold(&self, scope: &Scope, filter: &MemoryFilter) -> Result<usize> {
        let Some(cold) = self.cold() else { return Ok(0) };
        let _moving = cold.guard();
        let files = self.cold_files(Some(&scope.tenant), filter, scope.systems.as_deref())?;
        let mut ids = Vec::new();
        for (_, memories) in cold.read(&files)? {
            ids.extend(memories.iter().filter(|m| scope.permits(m) && filter.matches(m)).map(|m| m.id));
        }
        Ok(self.take_cold(cold, &ids, Taken::Discard)?.len())
    }

    /// Cold files of `tenant` (all tenants: `None`) that may hold memories matching
    /// `filter` and `systems`: partitions pruned by system and time range.
    fn cold_files(
        &self,
        tenant: Option<&str>,
        filter: &MemoryFilter,
        systems: Option<&[String]>,
    ) -> Result<Vec<String>> {
        self.store().read(|c| {
            let mut st = c
                .prepare_cached(
                    "SELECT path, system_id FROM cold_files WHERE (?1 IS NULL OR tenant = ?1) \
                     AND (?2 IS NULL OR system_id = ?2) AND (?3 IS NULL OR max_created >= ?3) \
                     AND (?4 IS NULL OR min_created < ?4) ORDER BY min_created",
                )
                .map_err(storage)?;
            let rows = st
                .query_map(params![tenant, filter.system_id, filter.since, filter.until], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })
                .map_err(storage)?;
            let mut out = Vec::new();
            for row in rows {
                let (path, system) = row.map_err(storage)?;
                if systems.is_none_or(|s| s.contains(&system)) {
                    out.push(path);
                }
            }
            Ok(out)
        })
    }

    /// Cold memories of `scope` matching `filter`, visible at `now`.
    pub(crate) fn scan_cold(&self, scope: &Scope, filter: &MemoryFilter, now: i64) -> Result<Vec<Memory>> {
        let Some(cold) = self.cold() else { return Ok(Vec::new()) };
        let files = self.cold_files(Some(&scope.tenant), filter, scope.systems.as_deref())?;
        let mut out = Vec::new();
        for (_, memories) in cold.read(&files)? {
            out.extend(memories.iter().filter(|m| filter.matches(m) && self.visible(scope, m, now)).cloned());
        }
        Ok(out)
    }

    /// Call `f` for every cold memory (of `tenant`, or all); returns how many.
    pub(crate) fn each_cold(&self, tenant: Option<&str>, mut f: impl FnMut(Memory) -> Result<()>) -> Result<usize> {
        let Some(cold) = self.cold() else { return Ok(0) };
        let files = self.cold_files(tenant, &MemoryFilter::default(), None)?;
        let mut n = 0;
        // A file at a time: an export of a large archive never holds it all.
        for file in files {
            for (_, memories) in cold.read(&[file])? {
                for m in memories.iter() {
                    f(m.clone())?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// A cold memory by server id, if the catalog has it in `tenant`.
    pub(crate) fn get_cold(&self, tenant: &str, id: &Uuid) -> Result<Option<Memory>> {
        let Some(cold) = self.cold() else { return Ok(None) };
        let file: Option<String> = self.store().read(|c| {
            c.prepare_cached("SELECT file FROM cold_memories WHERE id = ?1 AND tenant = ?2")
                .and_then(|mut st| st.query_row(params![id.to_string(), tenant], |r| r.get(0)).optional())
                .map_err(storage)
        })?;
        let Some(file) = file else { return Ok(None) };
        Ok(cold.read(&[file])?.into_iter().flat_map(|(_, f)| f.iter().find(|m| m.id == *id).cloned()).next())
    }

    /// Cold memories by client key in `tenant` (`system_id` optional), at most two.
    pub(crate) fn cold_by_memory_id(
        &self,
        tenant: &str,
        system_id: Option<&str>,
        memory_id: &str,
    ) -> Result<Vec<Memory>> {
        if self.cold().is_none() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = self.store().read(|c| {
            let mut st = c
                .prepare_cached(
                    "SELECT id FROM cold_memories WHERE tenant = ?1 AND memory_id = ?2 AND (?3 IS NULL OR system_id = ?3) LIMIT 2",
                )
                .map_err(storage)?;
            let rows = st.query_map(params![tenant, memory_id, system_id], |r| r.get(0)).map_err(storage)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(storage)
        })?;
        let mut out = Vec::new();
        for id in ids.iter().filter_map(|i| Uuid::parse_str(i).ok()) {
            out.extend(self.get_cold(tenant, &id)?);
        }
        Ok(out)
    }

    /// Counts and bytes per tier for `scope`.
    pub(crate) fn tier_stats(&self, scope: &Scope, sizes: &IndexSizes) -> Result<BTreeMap<Tier, TierStats>> {
        let now = now_micros();
        let mut out = BTreeMap::new();
        {
            let state = self.indexes().read();
            for (tier, bytes) in [(Tier::Hot, sizes.hot_graph_bytes), (Tier::Warm, sizes.warm_graph_bytes)] {
                let mut plan = state.filters.plan(scope, &MemoryFilter::default(), now);
                plan.restrict_tiers(&[tier]);
                out.insert(tier, TierStats { memories: plan.count(), bytes: bytes as u64 });
            }
        }
        let (memories, bytes) = self.store().read(|c| {
            let mut st = c
                .prepare_cached(
                    "SELECT system_id, kind, user_id, COUNT(*) FROM cold_memories WHERE tenant = ?1 GROUP BY 1, 2, 3",
                )
                .map_err(storage)?;
            let rows = st
                .query_map(params![scope.tenant], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<String>>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                })
                .map_err(storage)?;
            let mut n = 0;
            for row in rows {
                let (system, kind, user, count) = row.map_err(storage)?;
                if scope.admits(&scope.tenant, user.as_deref(), &system, &kind) {
                    n += count as usize;
                }
            }
            let bytes: i64 = c
                .query_row(
                    "SELECT COALESCE(SUM(bytes), 0) FROM cold_files WHERE tenant = ?1",
                    params![scope.tenant],
                    |r| r.get(0),
                )
                .map_err(storage)?;
            Ok((n, bytes as u64))
        })?;
        out.insert(Tier::Cold, TierStats { memories, bytes: if scope.is_whole_tenant() { bytes } else { 0 } });
        Ok(out)
    }
}

/// A cold memory's BM25 and vector scores within one search.
pub(crate) struct ColdHit {
    pub memory: Memory,
    pub bm25: f32,
    pub coverage: f32,
    pub cosine: Option<f32>,
}

/// Score scanned cold memories: BM25 over the scanned set (its own statistics) for
/// `terms`, and cosine against `query` for vectors of `model`.
pub(crate) fn score_cold(
    memories: Vec<Memory>,
    terms: &[(String, bool)],
    query: Option<&[f32]>,
    model: &str,
) -> Vec<ColdHit> {
    use crate::index::Analysed;
    let analysed: Vec<Analysed> =
        if terms.is_empty() { Vec::new() } else { memories.iter().map(|m| Analysed::of(&m.content)).collect() };
    let docs = analysed.len() as u64;
    let avg_len = (analysed.iter().map(|a| u64::from(a.len)).sum::<u64>() as f32 / docs.max(1) as f32).max(1.0);
    let df: HashMap<&str, u64> = terms
        .iter()
        .map(|(t, _)| {
            (
                t.as_str(),
                analysed.iter().filter(|a| a.terms.binary_search_by(|(x, _)| x.as_str().cmp(t)).is_ok()).count() as u64,
            )
        })
        .collect();
    memories
        .into_iter()
        .enumerate()
        .map(|(i, memory)| {
            let (mut bm25, mut matched, mut content) = (0f32, 0u32, false);
            if let Some(a) = analysed.get(i) {
                for (term, is_content) in terms {
                    if let Ok(pos) = a.terms.binary_search_by(|(x, _)| x.as_str().cmp(term)) {
                        let tf = a.terms[pos].1 as f32;
                        let w = crate::index::pending::idf(docs, df[term.as_str()]);
                        bm25 += w * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * a.len as f32 / avg_len));
                        matched += 1;
                        content |= *is_content;
                    }
                }
            }
            if !content {
                bm25 = 0.0;
            }
            let cosine = query.and_then(|q| {
                let v = memory.embedding.as_deref().filter(|_| memory.embedding_model.as_deref() == Some(model))?;
                Some(crate::index::pending::dot(&crate::index::normalized(v)?, q))
            });
            let coverage = if terms.is_empty() { 0.0 } else { matched as f32 / terms.len() as f32 };
            ColdHit { memory, bm25, coverage, cosine }
        })
        .collect()
}
