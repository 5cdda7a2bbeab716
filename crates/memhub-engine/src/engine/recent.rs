//! The newest published changes, kept in memory: readers that follow the log closely
//! (every open `GET /v1/events` stream, the webhook loop, `list_changes` callers
//! caught up) read them here instead of each making its own store read per commit.
//! The store's log stays the truth; this is a window onto its end.

use std::collections::VecDeque;
use std::sync::{OnceLock, RwLock};

use super::*;

/// Changes held (about 2 MB): a reader further behind reads the store.
const HELD: usize = 16_384;

pub(crate) struct RecentChanges(RwLock<Window>);

struct Window {
    /// Every change after this sequence number is held (in `changes`, in order).
    from: i64,
    changes: VecDeque<Held>,
}

/// A held change and its wire form, rendered by the first reader that wants it and
/// then shared: a hundred feed streams cost one serialization per change, not a hundred.
struct Held {
    change: Change,
    json: OnceLock<Arc<str>>,
}

impl Held {
    fn new(change: Change) -> Self {
        Held { change, json: OnceLock::new() }
    }

    fn rendered(&self) -> RenderedChange {
        let json = self.json.get_or_init(|| self.change.to_json().into()).clone();
        RenderedChange { seq: self.change.seq, op: self.change.op, json }
    }
}

impl std::borrow::Borrow<Change> for &Held {
    fn borrow(&self) -> &Change {
        &self.change
    }
}

impl RecentChanges {
    /// An empty window starting after `last`, the store's last change at open.
    /// `None` for a read-only open: another process writes, and only the store
    /// sees its changes, so every read goes there.
    pub(crate) fn new(last: Option<i64>) -> Self {
        RecentChanges(RwLock::new(Window { from: last.unwrap_or(i64::MAX), changes: VecDeque::new() }))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Window> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Window> {
        self.0.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Append published changes (called in commit order, under the commit-order lock).
    pub(crate) fn push(&self, changes: &[Change]) {
        let mut w = self.write();
        for c in changes {
            // The store cleared the erased memory's key from its earlier entries; so does
            // the window (and forgets their wire form, which carried the key).
            if c.op == ChangeOp::Erased {
                for earlier in w.changes.iter_mut().filter(|e| e.change.id == c.id) {
                    earlier.change.memory_id = None;
                    earlier.json = OnceLock::new();
                }
            }
            w.changes.push_back(Held::new(Change { memory: None, ..c.clone() }));
        }
        while w.changes.len() > HELD {
            let dropped = w.changes.pop_front().expect("longer than HELD");
            w.from = dropped.change.seq;
        }
    }

    /// Forget changes through `seq` (pruned from the log): their readers must hear `reset`
    /// from the store.
    pub(crate) fn forget_through(&self, seq: i64) {
        let mut w = self.write();
        while w.changes.front().is_some_and(|c| c.change.seq <= seq) {
            w.changes.pop_front();
        }
        w.from = w.from.max(seq);
    }

    /// The page [`Engine::changes`] would read from the store, if every change after
    /// `after` is held (the same rule, [`page_of`], over the held changes).
    pub(crate) fn page(&self, scope: &Scope, after: i64, filter: &ChangeFilter, limit: usize) -> Option<ChangePage> {
        self.walk(scope, after, filter, limit, |held| held.change.clone()).map(|(changes, next_after)| ChangePage {
            changes,
            next_after,
            reset: false,
        })
    }

    /// [`page`](Self::page) in wire form.
    pub(crate) fn rendered(
        &self,
        scope: &Scope,
        after: i64,
        filter: &ChangeFilter,
        limit: usize,
    ) -> Option<(Vec<RenderedChange>, i64)> {
        self.walk(scope, after, filter, limit, Held::rendered)
    }

    fn walk<T>(
        &self,
        scope: &Scope,
        after: i64,
        filter: &ChangeFilter,
        limit: usize,
        out: impl Fn(&Held) -> T,
    ) -> Option<(Vec<T>, i64)> {
        let w = self.read();
        if after < w.from {
            return None;
        }
        let start = w.changes.partition_point(|c| c.change.seq <= after);
        let held = w.changes.range(start..).map(Ok);
        let (kept, next_after) = page_of(held, after, scope, filter, limit, CHANGES_SCANNED).ok()?;
        Some((kept.into_iter().map(out).collect(), next_after))
    }
}
