//! The cold tier as one component: Parquet files in object storage, the lock every
//! move holds, and a cache of decoded files. The store's catalog (`cold_files`,
//! `cold_memories`) is the truth about which cold memories exist and where (see the
//! tiers module for the invariants). The tier reads the catalog and commits through
//! the [`Committer`] the engine hands it, so its catalog swaps reach the indexes and
//! the change feed like any other write.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use memhub_objects::{BlockingBucket, BucketConfig, ObjectError};
use memhub_types::{ChangeOp, Error, ErrorCode, Memory, MemoryFilter, Result, RetentionPolicy, Scope, Tier};
use uuid::Uuid;

use crate::store::{ColdEntry, MemoryStore, StoreTx};

/// What the cold tier needs of the engine that owns it: the source of truth to read,
/// and commits whose changes feed the indexes and the change feed.
pub(crate) trait Committer {
    fn store(&self) -> &dyn MemoryStore;
    /// Run `work` in one durable transaction and publish its changes.
    fn commit<T>(&self, work: impl FnMut(&mut dyn StoreTx) -> Result<T>) -> Result<T>;
}

/// A decoded cold file, shared by concurrent readers.
pub(crate) struct ColdRows {
    pub memories: Vec<Memory>,
    /// Each memory's analysed text, computed the first time a search's filter admits
    /// it: a repeated search over the same window tokenizes nothing.
    analysed: Vec<OnceLock<crate::index::Analysed>>,
}

impl ColdRows {
    fn new(memories: Vec<Memory>) -> ColdRows {
        let analysed = memories.iter().map(|_| OnceLock::new()).collect();
        ColdRows { memories, analysed }
    }

    fn analysed(&self, row: usize) -> &crate::index::Analysed {
        self.analysed[row].get_or_init(|| crate::index::Analysed::of(&self.memories[row].content))
    }
}

type ColdFile = Arc<ColdRows>;

/// The cold tier: a bucket, the lock every move holds, and recently read files
/// (files never change, so a cached one is never stale).
pub(crate) struct ColdTier {
    pub(crate) bucket: BlockingBucket,
    lock: Mutex<()>,
    cache: Mutex<(HashMap<String, ColdFile>, Vec<String>)>,
}

/// Decoded files kept in memory for repeated cold reads: at most this many files
/// and (about) this many memories, the least recently read evicted first.
const CACHED_FILES: usize = 32;
const CACHED_ROWS: usize = 200_000;

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

    /// Read cold files (cached, or fetched up to 8 at a time and decoded on every
    /// core).
    fn read(&self, paths: &[String]) -> Result<Vec<(String, ColdFile)>> {
        let mut found: HashMap<&str, ColdFile> = HashMap::new();
        let mut missing = Vec::new();
        {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            for p in paths {
                match cache.0.get(p) {
                    Some(f) => {
                        found.insert(p, f.clone());
                        // Most recently used last.
                        cache.1.retain(|k| k != p);
                        cache.1.push(p.clone());
                    }
                    None => missing.push(p.clone()),
                }
            }
        }
        let fetched: Vec<Bytes> =
            self.bucket.get_many(&missing).into_iter().collect::<std::result::Result<_, _>>().map_err(object_error)?;
        let decoded = decode_parallel(fetched)?;
        {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            for (path, file) in missing.iter().zip(decoded) {
                cache.0.insert(path.clone(), file.clone());
                cache.1.retain(|k| k != path);
                cache.1.push(path.clone());
                found.insert(path, file);
            }
            let mut rows: usize = cache.0.values().map(|f| f.memories.len()).sum();
            while cache.1.len() > 1 && (cache.1.len() > CACHED_FILES || rows > CACHED_ROWS) {
                let old = cache.1.remove(0);
                rows -= cache.0.remove(&old).map_or(0, |f| f.memories.len());
            }
        }
        Ok(paths.iter().filter_map(|p| Some((p.clone(), found.get(p.as_str())?.clone()))).collect())
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

    /// Write warm memories `seqs` (one tenant and system) to cold files by month,
    /// then, in one transaction, catalog them and remove them from the store, if
    /// none changed meanwhile. Returns `(memories moved, files written)`.
    pub(crate) fn freeze(&self, w: &impl Committer, seqs: &[i64]) -> Result<(usize, usize)> {
        let _moving = self.guard();
        let loaded: Vec<(i64, Memory)> =
            w.store().memories_by_row(seqs)?.into_iter().filter(|(_, m)| m.tier == Tier::Warm).collect();
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
            let bytes = self.write(&key, &memories)?;
            let committed = w.commit(|tx| {
                // Every memory must still be the version that was written out.
                for (row, m) in &group {
                    let now = tx.find_by_row(*row)?;
                    if now.is_none_or(|now| now.version != m.version || now.tier != Tier::Warm) {
                        return Ok(false);
                    }
                }
                tx.catalog_file(&key, &memories, bytes)?;
                for (row, m) in &group {
                    tx.archive(*row, m)?;
                }
                Ok(true)
            })?;
            if committed {
                moved += group.len();
                files += 1;
            } else {
                // Changed while being written out: retried by the next run.
                self.delete(&key);
            }
        }
        Ok((moved, files))
    }

    /// Merge the small files of each partition (under half of `file_rows` rows; every
    /// aging run leaves one per partition it touches) into files of up to
    /// `file_rows`: a cold search reads a few full files, not one per run. The merged
    /// object is written first, then one transaction swaps the catalog (only if every
    /// old file is still cataloged: a purge may have replaced one meanwhile). The old
    /// objects hold the same memories, so they are not deleted now but left to the
    /// next run's sweep: a search or export that listed them keeps reading them.
    /// Returns how many files were merged away.
    pub(crate) fn merge_small_files(&self, w: &impl Committer, file_rows: usize) -> Result<usize> {
        let small = w.store().cold_small_files(file_rows / 2)?;
        let mut partitions: BTreeMap<&str, Vec<(&String, usize)>> = BTreeMap::new();
        for (path, rows) in &small {
            let partition = path.rsplit_once('/').map_or("", |(p, _)| p);
            partitions.entry(partition).or_default().push((path, *rows));
        }
        let mut merged_away = 0;
        for files in partitions.into_values() {
            let mut groups: Vec<Vec<&String>> = Vec::new();
            let mut rows_in_last = usize::MAX;
            for (path, rows) in files {
                if rows_in_last.saturating_add(rows) > file_rows {
                    groups.push(Vec::new());
                    rows_in_last = 0;
                }
                rows_in_last += rows;
                groups.last_mut().expect("a group").push(path);
            }
            for group in groups.into_iter().filter(|g| g.len() > 1) {
                let _moving = self.guard();
                let paths: Vec<String> = group.into_iter().cloned().collect();
                let mut memories: Vec<Memory> =
                    self.read(&paths)?.iter().flat_map(|(_, f)| f.memories.iter().cloned()).collect();
                memories.sort_by_key(|m| m.created_at);
                let key = cold_key(&memories[0]);
                let bytes = self.write(&key, &memories)?;
                let swapped = w.commit(|tx| {
                    for old in &paths {
                        if !tx.uncatalog_file(old)? {
                            return Err(Error::internal(format!("{old} left the catalog during a merge")));
                        }
                    }
                    tx.catalog_file(&key, &memories, bytes)
                });
                match swapped {
                    Ok(()) => merged_away += paths.len() - 1,
                    // Rolled back: the merged object is an orphan; the group is retried next run.
                    Err(e) => {
                        tracing::warn!(error = %e, "cold merge skipped");
                        self.delete(&key);
                    }
                }
            }
        }
        Ok(merged_away)
    }

    /// Delete objects under the bucket that the catalog does not name; returns how many.
    pub(crate) fn sweep_orphans(&self, w: &impl Committer) -> Result<usize> {
        let _moving = self.guard();
        self.sweep_orphans_locked(w)
    }

    /// [`ColdTier::sweep_orphans`] for a caller holding `lock`, so no move is
    /// between writing an object and cataloging it.
    fn sweep_orphans_locked(&self, w: &impl Committer) -> Result<usize> {
        let listed = self.bucket.list("").map_err(object_error)?;
        let known = w.store().cold_paths()?;
        let mut removed = 0;
        for o in listed.into_iter().filter(|o| o.key.ends_with(".parquet") && !known.contains(&o.key)) {
            self.delete(&o.key);
            removed += 1;
        }
        Ok(removed)
    }

    /// Take cold memories `ids` out of their files: each affected file is replaced
    /// by one without them (or dropped when nothing is left), and the memories are
    /// restored into the store as warm or discarded with their history.
    fn take(&self, w: &impl Committer, ids: &[Uuid], taken: Taken) -> Result<Vec<Memory>> {
        let by_file = w.store().cold_files_of(ids)?;
        let mut all_taken = Vec::new();
        for (file, ids) in by_file {
            let [(_, memories)]: [(String, ColdFile); 1] =
                self.read(std::slice::from_ref(&file))?.try_into().map_err(|_| Error::internal("one file"))?;
            let (out, kept): (Vec<Memory>, Vec<Memory>) =
                memories.memories.iter().cloned().partition(|m| ids.contains(&m.id));
            let replacement = match kept.first() {
                Some(first) => {
                    let key = cold_key(first);
                    let bytes = self.write(&key, &kept)?;
                    Some((key, bytes))
                }
                None => None,
            };
            let restored = w.commit(|tx| {
                tx.uncatalog_file(&file)?;
                if let Some((key, bytes)) = &replacement {
                    tx.catalog_file(key, &kept, *bytes)?;
                }
                let mut restored = Vec::new();
                for m in &out {
                    match taken {
                        Taken::Restore => {
                            let m = Memory { tier: Tier::Warm, ..m.clone() };
                            tx.insert(&m, ChangeOp::Thawed)?;
                            restored.push(m);
                        }
                        Taken::Discard(op) => {
                            tx.discard_cold(m, op)?;
                        }
                    }
                }
                Ok(restored)
            })?;
            self.delete(&file);
            all_taken.extend(match taken {
                Taken::Restore => restored,
                Taken::Discard(_) => out,
            });
        }
        if matches!(taken, Taken::Discard(_)) {
            // Files a merge replaced may still hold copies of what was just removed.
            self.sweep_orphans_locked(w)?;
        }
        Ok(all_taken)
    }

    /// Bring cold memories with these keys back into the store (as warm) so a write
    /// can update them. Returns how many were thawed.
    pub(crate) fn thaw_keys(&self, w: &impl Committer, keys: &[(&str, &str, &str)]) -> Result<usize> {
        let _moving = self.guard();
        let ids = w.store().cold_ids_by_key(keys)?;
        if ids.is_empty() {
            return Ok(0);
        }
        Ok(self.take(w, &ids, Taken::Restore)?.len())
    }

    /// Bring the cold memory `id` back into the store; whether it was cold.
    pub(crate) fn thaw_id(&self, w: &impl Committer, id: &Uuid) -> Result<bool> {
        let _moving = self.guard();
        Ok(!self.take(w, &[*id], Taken::Restore)?.is_empty())
    }

    /// Remove the cold memories (any tenant) whose catalog entries `expired` picks,
    /// with their history. Chosen from the catalog: no file is read unless it holds one.
    pub(crate) fn purge(&self, w: &impl Committer, expired: impl Fn(&ColdEntry) -> bool) -> Result<usize> {
        let _moving = self.guard();
        let ids: Vec<Uuid> = w.store().cold_entries()?.into_iter().filter(|e| expired(e)).map(|e| e.id).collect();
        if ids.is_empty() {
            return Ok(0);
        }
        Ok(self.take(w, &ids, Taken::Discard(ChangeOp::Purged))?.len())
    }

    /// Remove cold memories of `scope` matching `filter` (expired ones included), with
    /// their history: the files the filter allows are read, matches taken out.
    pub(crate) fn erase(
        &self,
        w: &impl Committer,
        scope: &Scope,
        filter: &MemoryFilter,
        retention: &[RetentionPolicy],
    ) -> Result<usize> {
        let _moving = self.guard();
        let files = self.files(w.store(), Some(&scope.tenant), filter, scope.systems.as_deref())?;
        let mut ids = Vec::new();
        // Erasure reaches expired memories too.
        let selection = memhub_types::Selection { scope, filter, retention, now: i64::MIN };
        for (_, memories) in self.read(&files)? {
            ids.extend(memories.memories.iter().filter(|m| selection.selects(m)).map(|m| m.id));
        }
        Ok(self.take(w, &ids, Taken::Discard(ChangeOp::Erased))?.len())
    }

    /// Cold files of `tenant` (all tenants: `None`) that may hold memories matching
    /// `filter` and `systems`: partitions pruned by system and time range.
    fn files(
        &self,
        store: &dyn MemoryStore,
        tenant: Option<&str>,
        filter: &MemoryFilter,
        systems: Option<&[String]>,
    ) -> Result<Vec<String>> {
        let files = store.cold_files(tenant, filter.system_id.as_deref(), filter.since, filter.until)?;
        Ok(files.into_iter().filter(|(_, system)| systems.is_none_or(|s| s.contains(system))).map(|(p, _)| p).collect())
    }

    /// Cold memories that `selection` selects: each file with the rows that match
    /// (nothing is copied).
    pub(crate) fn scan(
        &self,
        store: &dyn MemoryStore,
        selection: &memhub_types::Selection<'_>,
    ) -> Result<Vec<(ColdFile, Vec<u32>)>> {
        let scope = selection.scope;
        let files = self.files(store, Some(&scope.tenant), selection.filter, scope.systems.as_deref())?;
        let mut out = Vec::new();
        for (_, file) in self.read(&files)? {
            let rows: Vec<u32> =
                (0..file.memories.len() as u32).filter(|&i| selection.selects(&file.memories[i as usize])).collect();
            if !rows.is_empty() {
                out.push((file, rows));
            }
        }
        Ok(out)
    }

    /// Call `f` for every cold memory (of `tenant`, or all); returns how many.
    pub(crate) fn each(
        &self,
        store: &dyn MemoryStore,
        tenant: Option<&str>,
        mut f: impl FnMut(Memory) -> Result<()>,
    ) -> Result<usize> {
        let files = self.files(store, tenant, &MemoryFilter::default(), None)?;
        let mut n = 0;
        // A file at a time: an export of a large archive never holds it all.
        for file in files {
            for (_, memories) in self.read(&[file])? {
                for m in memories.memories.iter() {
                    f(m.clone())?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// A cold memory by server id, if the catalog has it in `tenant`.
    pub(crate) fn get(&self, store: &dyn MemoryStore, tenant: &str, id: &Uuid) -> Result<Option<Memory>> {
        let file = store.cold_file_of(tenant, id)?;
        let Some(file) = file else { return Ok(None) };
        Ok(self.read(&[file])?.into_iter().flat_map(|(_, f)| f.memories.iter().find(|m| m.id == *id).cloned()).next())
    }

    /// Cold memories by client key in `tenant` (`system_id` optional), at most two.
    pub(crate) fn by_memory_id(
        &self,
        store: &dyn MemoryStore,
        tenant: &str,
        system_id: Option<&str>,
        memory_id: &str,
    ) -> Result<Vec<Memory>> {
        let ids = store.cold_ids_by_memory_id(tenant, system_id, memory_id, 2)?;
        let mut out = Vec::new();
        for id in &ids {
            out.extend(self.get(store, tenant, id)?);
        }
        Ok(out)
    }
}

/// Decode fetched cold files, spread over the available cores (decoding, mostly
/// JSON, is what a first cold search waits on).
fn decode_parallel(files: Vec<Bytes>) -> Result<Vec<ColdFile>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(files.len().max(1));
    let decode = |bytes: Bytes| -> Result<ColdFile> {
        let memories = memhub_objects::parquet::decode(bytes).map_err(object_error)?;
        Ok(Arc::new(ColdRows::new(memories)))
    };
    if threads <= 1 {
        return files.into_iter().map(decode).collect();
    }
    let mut slots: Vec<Vec<(usize, Bytes)>> = vec![Vec::new(); threads];
    for (i, bytes) in files.into_iter().enumerate() {
        slots[i % threads].push((i, bytes));
    }
    let mut out: Vec<(usize, ColdFile)> = std::thread::scope(|s| {
        let handles: Vec<_> = slots
            .into_iter()
            .map(|slot| s.spawn(move || slot.into_iter().map(|(i, b)| Ok((i, decode(b)?))).collect::<Result<Vec<_>>>()))
            .collect();
        // Join every thread before looking at any result.
        let joined: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
        let mut out = Vec::new();
        for j in joined {
            out.extend(j.map_err(|_| Error::internal("decoding a cold file panicked"))??);
        }
        Ok::<_, Error>(out)
    })?;
    out.sort_by_key(|(i, _)| *i);
    Ok(out.into_iter().map(|(_, f)| f).collect())
}

/// What a cold removal does with the memories it takes out of their files.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Taken {
    /// Back into the store as warm memories (a write needs them there).
    Restore,
    /// Gone, with their history, for the reason the change says (purge, erasure).
    Discard(ChangeOp),
}

/// A cold memory's BM25 and vector scores within one search.
pub(crate) struct ColdHit {
    file: ColdFile,
    row: u32,
    pub bm25: f32,
    pub coverage: f32,
    pub cosine: Option<f32>,
}

impl ColdHit {
    pub fn memory(&self) -> &Memory {
        &self.file.memories[self.row as usize]
    }
}

/// Score scanned cold memories: BM25 over the scanned set (its own statistics) for
/// `terms`, and cosine against `query` (normalised) for vectors of `model`.
pub(crate) fn score_cold(
    scanned: Vec<(ColdFile, Vec<u32>)>,
    terms: &[(String, bool)],
    query: Option<&[f32]>,
    model: &str,
) -> Vec<ColdHit> {
    let position = |a: &crate::index::Analysed, term: &str| a.terms.binary_search_by(|(x, _)| x.as_str().cmp(term));
    let (mut docs, mut total_len) = (0u64, 0u64);
    let mut df = vec![0u64; terms.len()];
    if !terms.is_empty() {
        for (file, rows) in &scanned {
            for &row in rows {
                let a = file.analysed(row as usize);
                docs += 1;
                total_len += u64::from(a.len);
                for (n, (term, _)) in terms.iter().enumerate() {
                    df[n] += u64::from(position(a, term).is_ok());
                }
            }
        }
    }
    let avg_len = (total_len as f32 / docs.max(1) as f32).max(1.0);
    let idf: Vec<f32> = df.iter().map(|&d| crate::index::pending::idf(docs, d)).collect();
    let mut out = Vec::with_capacity(scanned.iter().map(|(_, rows)| rows.len()).sum());
    for (file, rows) in scanned {
        for row in rows {
            let memory = &file.memories[row as usize];
            let (mut bm25, mut matched, mut content) = (0f32, 0u32, false);
            if !terms.is_empty() {
                let a = file.analysed(row as usize);
                for (n, (term, is_content)) in terms.iter().enumerate() {
                    if let Ok(pos) = position(a, term) {
                        let tf = a.terms[pos].1 as f32;
                        bm25 += idf[n] * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * a.len as f32 / avg_len));
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
                cosine_to_unit(v, q)
            });
            let coverage = if terms.is_empty() { 0.0 } else { matched as f32 / terms.len() as f32 };
            out.push(ColdHit { file: file.clone(), row, bm25, coverage, cosine });
        }
    }
    out
}

/// Cosine of `v` and the unit vector `unit`, without normalising a copy of `v`;
/// `None` for a zero or non-finite `v` (the indexes skip those too).
fn cosine_to_unit(v: &[f32], unit: &[f32]) -> Option<f32> {
    if v.len() != unit.len() {
        return None;
    }
    let (mut dot, mut norm) = (0f32, 0f32);
    for (x, y) in v.iter().zip(unit) {
        dot += x * y;
        norm += x * x;
    }
    let norm = norm.sqrt();
    (norm.is_finite() && norm > 0.0).then(|| dot / norm)
}
