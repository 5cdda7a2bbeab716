//! The memories of search hits, kept by row for a store in another process
//! (PostgreSQL): without it each search reads its hits from the database in a round
//! trip, 1.1–1.4 ms at 100k memories (`memhub bench pgvector`, 2026-12-04), more
//! than the search itself. An embedded store reads them from local pages and keeps
//! no cache.
//!
//! Fed and emptied by the change stream: every published change drops its row
//! before the indexes see it, so a search never serves a version older than what
//! this replica has applied. A search that read rows from the store keeps them only
//! if nothing was published while it read (the generation did not move): a row read
//! just before a change and kept just after would otherwise outlive its invalidation.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use memhub_types::{Change, Memory, Result};

pub(crate) struct HitCache {
    entries: Option<Mutex<lru::LruCache<i64, Memory>>>,
    /// Bumped by every invalidation, before it removes rows.
    generation: AtomicU64,
}

impl HitCache {
    /// Keep up to `entries` memories (0: none; every hit is read from the store).
    pub(crate) fn new(entries: usize) -> HitCache {
        HitCache {
            entries: NonZeroUsize::new(entries).map(|n| Mutex::new(lru::LruCache::new(n))),
            generation: AtomicU64::new(0),
        }
    }

    fn lock(m: &Mutex<lru::LruCache<i64, Memory>>) -> std::sync::MutexGuard<'_, lru::LruCache<i64, Memory>> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The memories of `rows` (those that exist), from the cache where it has them
    /// and from `load` for the rest.
    pub(crate) fn get(
        &self,
        rows: &[i64],
        load: impl FnOnce(&[i64]) -> Result<Vec<(i64, Memory)>>,
    ) -> Result<HashMap<i64, Memory>> {
        let Some(entries) = &self.entries else { return Ok(load(rows)?.into_iter().collect()) };
        let mut found = HashMap::with_capacity(rows.len());
        let mut missing = Vec::new();
        {
            let mut cache = Self::lock(entries);
            for &row in rows {
                match cache.get(&row) {
                    Some(m) => {
                        found.insert(row, m.clone());
                    }
                    None => missing.push(row),
                }
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        let before = self.generation.load(Ordering::SeqCst);
        let loaded = load(&missing)?;
        {
            let mut cache = Self::lock(entries);
            if self.generation.load(Ordering::SeqCst) == before {
                for (row, m) in &loaded {
                    cache.put(*row, m.clone());
                }
            }
        }
        found.extend(loaded);
        Ok(found)
    }

    /// Forget the rows `changes` touch (before they are published).
    pub(crate) fn invalidate(&self, changes: &[Change]) {
        let Some(entries) = &self.entries else { return };
        self.generation.fetch_add(1, Ordering::SeqCst);
        let mut cache = Self::lock(entries);
        for row in changes.iter().filter_map(|c| c.row) {
            cache.pop(&row);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn memory(row: i64, content: &str) -> Memory {
        Memory {
            id: uuid::Uuid::now_v7(),
            tenant: "t".into(),
            system_id: "s".into(),
            memory_id: format!("m{row}"),
            kind: "note".into(),
            schema_version: 1,
            content: content.into(),
            attributes: serde_json::json!({}),
            metadata: Default::default(),
            tags: Vec::new(),
            user_id: None,
            agent_id: None,
            session_id: None,
            project: None,
            created_at: 1,
            ingested_at: 1,
            updated_at: 1,
            expires_at: None,
            embedding: None,
            embedding_model: None,
            content_hash: "h".into(),
            version: 1,
            ingestion_method: memhub_types::memory::IngestionMethod::Rest,
            tier: memhub_types::Tier::Hot,
        }
    }

    fn change(row: i64) -> Change {
        Change {
            seq: row,
            op: memhub_types::ChangeOp::Updated,
            tenant: "t".into(),
            id: uuid::Uuid::now_v7(),
            memory_id: None,
            system_id: None,
            kind: None,
            user_id: None,
            version: None,
            at: 0,
            row: Some(row),
            memory: None,
        }
    }

    #[test]
    fn hits_are_read_once_and_forgotten_when_their_row_changes() {
        let cache = HitCache::new(8);
        let reads = Cell::new(0);
        let load = |rows: &[i64]| {
            reads.set(reads.get() + rows.len());
            Ok(rows.iter().map(|&r| (r, memory(r, "v1"))).collect())
        };
        assert_eq!(cache.get(&[1, 2], load).unwrap().len(), 2);
        assert_eq!(cache.get(&[1, 2], load).unwrap()[&1].content, "v1");
        assert_eq!(reads.get(), 2, "the second search read nothing");
        cache.invalidate(&[change(1)]);
        cache.get(&[1, 2], load).unwrap();
        assert_eq!(reads.get(), 3, "only the changed row is read again");

        // A read that a publish overtook is served but not kept.
        let racing = |rows: &[i64]| {
            cache.invalidate(&[change(9)]);
            Ok(rows.iter().map(|&r| (r, memory(r, "old"))).collect())
        };
        assert_eq!(cache.get(&[3], racing).unwrap()[&3].content, "old");
        let fresh = |rows: &[i64]| Ok(rows.iter().map(|&r| (r, memory(r, "new"))).collect());
        assert_eq!(cache.get(&[3], fresh).unwrap()[&3].content, "new", "the raced read was not kept");

        let off = HitCache::new(0);
        off.get(&[1], load).unwrap();
        off.get(&[1], load).unwrap();
        assert_eq!(reads.get(), 5, "entries = 0 keeps nothing");
    }
}
