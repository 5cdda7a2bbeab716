//! Group commit: store writes that arrive while another transaction commits wait in
//! a queue, and the next writer to take the commit-order lock runs all of them in one
//! durable transaction. Each is still acknowledged only once that transaction is on
//! disk and its changes are published; concurrent single writes stop paying one
//! `fsync` and one index update each.
//!
//! A queued write that fails (a storage error, a key moving to the cold tier) must not
//! fail the others: the group's transaction is rolled back and each of its writes runs
//! again alone, so every caller gets exactly the result it would have had by itself.

use std::sync::{Arc, Mutex, MutexGuard};

use super::*;

/// The most memories one group writes: bounds how long the first writer of a group
/// waits for the others (about one full batch).
const GROUP_ITEMS: usize = 1000;

type QueuedWork = Box<dyn FnMut(&mut dyn StoreTx) -> Result<()> + Send>;

/// One write waiting for a transaction.
struct Queued {
    work: QueuedWork,
    /// Memories it writes (a group stops at [`GROUP_ITEMS`]).
    items: usize,
    /// Set once its transaction committed (`Ok`) or it failed alone (`Err`).
    fate: Arc<Mutex<Option<Result<()>>>>,
}

/// Writes waiting for the commit-order lock.
#[derive(Default)]
pub(crate) struct WriteQueue(Mutex<Vec<Queued>>);

impl WriteQueue {
    fn push(&self, q: Queued) {
        lock(&self.0).push(q);
    }

    /// The oldest queued writes, up to [`GROUP_ITEMS`] memories (always at least one
    /// write); one write only when `grouping` is off.
    fn take_group(&self, grouping: bool) -> Vec<Queued> {
        let mut queue = lock(&self.0);
        let mut items = 0;
        let mut n = 0;
        for q in queue.iter() {
            if n > 0 && (!grouping || items + q.items > GROUP_ITEMS) {
                break;
            }
            items += q.items;
            n += 1;
        }
        queue.drain(..n).collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Engine {
    /// Like [`commit`](Self::commit), for a write that may share its transaction with
    /// other writers' (see the module doc). `items` is how many memories it writes.
    pub(crate) fn commit_grouped<T: Send + 'static>(
        &self,
        items: usize,
        mut work: impl FnMut(&mut dyn StoreTx) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let out: Arc<Mutex<Option<T>>> = Arc::default();
        let fate: Arc<Mutex<Option<Result<()>>>> = Arc::default();
        let slot = out.clone();
        self.write_queue.push(Queued {
            // A rerun (alone, or a backend's retry) overwrites the result of the last run.
            work: Box::new(move |tx| {
                *lock(&slot) = Some(work(tx)?);
                Ok(())
            }),
            items,
            fate: fate.clone(),
        });
        {
            let _in_order = lock(&self.commit_order);
            // A writer ahead of us may have committed ours with its own; if not, we
            // commit the oldest group, until ours is done.
            while lock(&fate).is_none() {
                let group = self.write_queue.take_group(self.config.group_commit);
                self.commit_group(group);
            }
        }
        let fate = lock(&fate).take().expect("set before the loop ends");
        fate?;
        let out = lock(&out).take();
        out.ok_or_else(|| Error::internal("the store committed without running the write"))
    }

    /// Run `group` in one transaction (the commit-order lock held), publish its
    /// changes, and tell each write its fate.
    fn commit_group(&self, mut group: Vec<Queued>) {
        telemetry::write_group(group.len());
        let result = self.write_in_order(&mut |tx| group.iter_mut().try_for_each(|q| (q.work)(tx)));
        match result {
            Ok(_) => {
                for q in &group {
                    *lock(&q.fate) = Some(Ok(()));
                }
            }
            Err(e) if group.len() == 1 => *lock(&group[0].fate) = Some(Err(e)),
            Err(e) => {
                tracing::debug!(error = %e, writes = group.len(), "a grouped write failed; running the group's writes one by one");
                for q in group {
                    self.commit_group(vec![q]);
                }
            }
        }
    }
}
