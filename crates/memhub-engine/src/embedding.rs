//! Server-side embedding: memories stored without a vector of the configured model
//! are queued and embedded in the background, in batches. The queue is derived
//! state (rebuilt from the index on open); the vectors are written to the store.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::Engine;

/// Memories (by store sequence number) waiting for a server-side vector.
#[derive(Default)]
pub(crate) struct EmbeddingQueue {
    pending: Mutex<(VecDeque<i64>, HashSet<i64>)>,
    wake: Condvar,
}

impl EmbeddingQueue {
    pub fn push(&self, seq: i64) {
        let mut q = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if q.1.insert(seq) {
            q.0.push_back(seq);
            self.wake.notify_one();
        }
    }

    pub fn len(&self) -> usize {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).0.len()
    }

    /// Up to `n` queued items, waiting at most `wait` for the first.
    fn take(&self, n: usize, wait: Duration) -> Vec<i64> {
        let mut q = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if q.0.is_empty() {
            q = self.wake.wait_timeout(q, wait).unwrap_or_else(|p| p.into_inner()).0;
        }
        let n = n.min(q.0.len());
        let taken: Vec<i64> = q.0.drain(..n).collect();
        for seq in &taken {
            q.1.remove(seq);
        }
        taken
    }

    fn wake_all(&self) {
        self.wake.notify_all();
    }
}

/// The background embedding thread. Stops (after its current batch) when dropped.
pub struct EmbeddingWorker {
    stop: Arc<AtomicBool>,
    engine: Arc<Engine>,
    handle: Option<JoinHandle<()>>,
}

impl EmbeddingWorker {
    /// Start the worker; it does nothing if the engine has no embedder.
    pub fn start(engine: Arc<Engine>) -> EmbeddingWorker {
        let stop = Arc::new(AtomicBool::new(false));
        let handle = engine.embedder().is_some().then(|| {
            let (engine, stop) = (engine.clone(), stop.clone());
            std::thread::Builder::new()
                .name("memhub-embed".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        // Many at once: the encoder sorts them by length into padded batches of 32.
                        let batch = engine.embed_queue().take(256, Duration::from_millis(500));
                        if batch.is_empty() {
                            continue;
                        }
                        if let Err(e) = engine.embed_pending(&batch) {
                            tracing::warn!(error = %e, n = batch.len(), "background embedding failed; retrying later");
                            for seq in batch {
                                engine.embed_queue().push(seq);
                            }
                            std::thread::sleep(Duration::from_secs(5));
                        }
                    }
                })
                .expect("spawn the embedding thread")
        });
        EmbeddingWorker { stop, engine, handle }
    }

    /// Stop and wait for the thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.engine.embed_queue().wake_all();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for EmbeddingWorker {
    fn drop(&mut self) {
        self.shutdown();
    }
}
