//! The metrics the engine records, through the `metrics` facade: the server
//! installs a Prometheus recorder and serves them on `/metrics`; without a
//! recorder (the CLI, benchmarks, tests) recording is a no-op.
//!
//! Labels are closed sets (methods, outcomes, modes, tiers), never tenants, systems
//! or ids, so a scrape stays small however many tenants a hub serves.

use memhub_types::memory::IngestionMethod;
use memhub_types::{Change, ChangeOp, Result, StoreOutcome, Tier};

use crate::engine::Stored;

pub const MEMORIES_WRITTEN: &str = "memhub_memories_written_total";
pub const SEARCHES: &str = "memhub_searches_total";
pub const SEARCH_SECONDS: &str = "memhub_search_duration_seconds";
pub const TIER_MOVES: &str = "memhub_tier_moves_total";
pub const MEMORIES_REMOVED: &str = "memhub_memories_removed_total";
pub const CHANGES: &str = "memhub_changes_total";
pub const WRITE_GROUP: &str = "memhub_write_group_size";
pub const QUERY_VECTORS: &str = "memhub_query_vectors_total";

/// Register the engine's metric descriptions with the installed recorder.
pub fn describe() {
    metrics::describe_counter!(
        MEMORIES_WRITTEN,
        "Memory writes by ingestion method and outcome (created, updated, unchanged, rejected)"
    );
    metrics::describe_counter!(
        SEARCHES,
        "Searches answered, by mode (hybrid, vector, keyword) and whether cold was scanned"
    );
    metrics::describe_histogram!(SEARCH_SECONDS, metrics::Unit::Seconds, "Engine time of a search, by mode");
    metrics::describe_counter!(TIER_MOVES, "Memories moved by the aging job, by destination tier");
    metrics::describe_counter!(MEMORIES_REMOVED, "Memories removed for good, by reason (retention, erasure, delete)");
    metrics::describe_counter!(CHANGES, "Changes committed to the store, by operation (the change stream)");
    metrics::describe_histogram!(WRITE_GROUP, "Store writes that shared one transaction (group commit)");
    metrics::describe_counter!(
        QUERY_VECTORS,
        "Query texts turned into vectors, by where the vector came from (local cache, shared cache, embedded)"
    );
}

/// Count the outcomes of a write of `results` made by `method`.
pub(crate) fn writes<'a>(method: IngestionMethod, results: impl IntoIterator<Item = &'a Result<Stored>>) {
    let (mut created, mut updated, mut unchanged, mut rejected) = (0u64, 0u64, 0u64, 0u64);
    for r in results {
        match r {
            Ok(s) if s.outcome == StoreOutcome::Created => created += 1,
            Ok(s) if s.outcome == StoreOutcome::Updated => updated += 1,
            Ok(_) => unchanged += 1,
            Err(_) => rejected += 1,
        }
    }
    for (outcome, n) in [("created", created), ("updated", updated), ("unchanged", unchanged), ("rejected", rejected)] {
        if n > 0 {
            metrics::counter!(MEMORIES_WRITTEN, "method" => method.as_str(), "outcome" => outcome).increment(n);
        }
    }
}

/// Record one answered search.
pub(crate) fn search(mode: &'static str, cold: bool, seconds: f64) {
    let cold = if cold { "true" } else { "false" };
    metrics::counter!(SEARCHES, "mode" => mode, "cold" => cold).increment(1);
    metrics::histogram!(SEARCH_SECONDS, "mode" => mode, "cold" => cold).record(seconds);
}

/// Count committed changes: by operation, and as removals and tier moves.
pub(crate) fn changes(changes: &[Change]) {
    let mut by_op = [0u64; ChangeOp::ALL.len()];
    let mut to_warm = 0;
    for c in changes {
        by_op[ChangeOp::ALL.iter().position(|op| *op == c.op).unwrap_or(0)] += 1;
        to_warm += usize::from(c.op == ChangeOp::Moved && c.memory.as_ref().is_some_and(|m| m.tier == Tier::Warm));
    }
    for (op, n) in ChangeOp::ALL.into_iter().zip(by_op) {
        if n == 0 {
            continue;
        }
        metrics::counter!(CHANGES, "op" => op.as_str()).increment(n);
        let n = n as usize;
        match op {
            ChangeOp::Deleted => removed("delete", n),
            ChangeOp::Purged => removed("retention", n),
            ChangeOp::Erased => removed("erasure", n),
            ChangeOp::Frozen => moved(Tier::Cold, n),
            _ => {}
        }
    }
    moved(Tier::Warm, to_warm);
}

/// Count memories removed for `reason`.
fn removed(reason: &'static str, n: usize) {
    if n > 0 {
        metrics::counter!(MEMORIES_REMOVED, "reason" => reason).increment(n as u64);
    }
}

/// Count memories the aging job moved to `tier`.
fn moved(tier: Tier, n: usize) {
    if n > 0 {
        metrics::counter!(TIER_MOVES, "to" => tier.as_str()).increment(n as u64);
    }
}

/// Record how many store writes one transaction carried.
pub(crate) fn write_group(writes: usize) {
    metrics::histogram!(WRITE_GROUP).record(writes as f64);
}
