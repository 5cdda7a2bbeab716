//! Following a shared store: when several memhub replicas write one database, each
//! replica's derived indexes and change feed must also take the changes the others
//! commit. The [`LogFollower`] thread waits for the store's commit signal and
//! publishes what the log holds after the last change this engine published, in
//! order, through the same path as the engine's own writes.
//!
//! Why no change is skipped: the store numbers changes in commit order (see
//! [`crate::store`]), and the engine publishes strictly by sequence number, its own
//! writes included (a write that finds others' changes before its own publishes
//! them first). So "everything after the last published" is a complete cursor.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::Engine;

/// How long the follower sleeps without a commit signal before it reads the log
/// anyway: bounds the lag when a signal is lost (the store's listener reconnecting).
pub const POLL: Duration = Duration::from_secs(1);

/// How often the follower reloads what the store keeps beside the log (registered
/// schemas, retention policies), which other replicas may have changed.
const SETTINGS_EVERY: Duration = Duration::from_secs(5);

/// The thread that keeps an engine over a shared store up to date with the other
/// replicas' writes. Stops when dropped.
pub struct LogFollower {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl LogFollower {
    /// Start following; does nothing when no other process writes the engine's store.
    pub fn start(engine: Arc<Engine>) -> LogFollower {
        let stop = Arc::new(AtomicBool::new(false));
        let handle = engine.shared_store().then(|| {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("memhub-follow".into())
                .spawn(move || follow(&engine, &stop))
                .expect("spawn the log follower")
        });
        LogFollower { stop, handle }
    }

    /// Stop and wait for the thread (within one poll interval).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for LogFollower {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn follow(engine: &Engine, stop: &AtomicBool) {
    let mut settings_loaded = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        engine.wait_for_log(POLL);
        if let Err(e) = engine.follow_log() {
            // The store is unreachable: the writes it refuses now are refused to
            // clients too; keep trying without flooding the log.
            tracing::warn!(error = %e, "following the change log failed; retrying");
            std::thread::sleep(POLL);
            continue;
        }
        if settings_loaded.elapsed() >= SETTINGS_EVERY {
            settings_loaded = Instant::now();
            if let Err(e) = engine.reload_settings() {
                tracing::warn!(error = %e, "reloading schemas and retention policies failed; retrying");
            }
        }
    }
}
