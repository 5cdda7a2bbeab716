//! The newest published changes, kept in memory: readers that follow the log closely
//! (every open `GET /v1/events` stream, the webhook loop, `list_changes` callers
//! caught up) read them here instead of each making its own store read per commit.
//! The store's log stays the truth; this is a window onto its end.

use std::collections::VecDeque;
use std::sync::Mutex;

use super::*;

/// Changes held (about 2 MB): a reader further behind reads the store.
const HELD: usize = 16_384;

pub(crate) struct RecentChanges(Mutex<Window>);

struct Window {
    /// Every change after this sequence number is held (in `changes`, in order).
    from: i64,
    changes: VecDeque<Change>,
}

impl RecentChanges {
    /// An empty window starting after `last`, the store's last change at open.
    /// `None` for a read-only open: another process writes, and only the store
    /// sees its changes, so every read goes there.
    pub(crate) fn new(last: Option<i64>) -> Self {
        RecentChanges(Mutex::new(Window { from: last.unwrap_or(i64::MAX), changes: VecDeque::new() }))
    }

    fn window(&self) -> std::sync::MutexGuard<'_, Window> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Append published changes (called in commit order, under the commit-order lock).
    pub(crate) fn push(&self, changes: &[Change]) {
        let mut w = self.window();
        for c in changes {
            // The store cleared the erased memory's key from its earlier entries; so does the window.
            if c.op == ChangeOp::Erased {
                for earlier in w.changes.iter_mut().filter(|e| e.id == c.id) {
                    earlier.memory_id = None;
                }
            }
            w.changes.push_back(Change { memory: None, ..c.clone() });
        }
        while w.changes.len() > HELD {
            let dropped = w.changes.pop_front().expect("longer than HELD");
            w.from = dropped.seq;
        }
    }

    /// Forget changes through `seq` (pruned from the log): their readers must hear `reset`
    /// from the store.
    pub(crate) fn forget_through(&self, seq: i64) {
        let mut w = self.window();
        while w.changes.front().is_some_and(|c| c.seq <= seq) {
            w.changes.pop_front();
        }
        w.from = w.from.max(seq);
    }

    /// The page [`Engine::changes`] would read from the store, if every change after
    /// `after` is held (the same rule, [`page_of`], over the held changes).
    pub(crate) fn page(
        &self,
        scope: &Scope,
        after: i64,
        filter: &ChangeFilter,
        limit: usize,
        scan: usize,
    ) -> Option<ChangePage> {
        let w = self.window();
        if after < w.from {
            return None;
        }
        let start = w.changes.partition_point(|c| c.seq <= after);
        let held = w.changes.range(start..).map(|c| Ok(Cow::Borrowed(c)));
        let (changes, next_after) = page_of(held, after, scope, filter, limit, scan).ok()?;
        Some(ChangePage { changes, next_after, reset: false })
    }
}
