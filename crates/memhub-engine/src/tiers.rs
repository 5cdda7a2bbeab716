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
//!
//! This module holds the boundaries and the aging job, which picks what moves; the
//! cold tier itself (files, cache, every move that touches them) is one component,
//! `crate::cold::ColdTier`.

use std::collections::BTreeMap;

use memhub_objects::BucketConfig;
use memhub_types::time::now_micros;
use memhub_types::{Error, ErrorCode, MemoryFilter, Result, Scope, Tier};
use serde::{Deserialize, Serialize};

use crate::engine::Engine;
use crate::index::IndexSizes;

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
    /// Objects no catalog entry named, deleted: files a merge replaced in an earlier
    /// run (kept until now for readers that had listed them) or left by a crash.
    pub orphans_removed: usize,
    /// Small files of one partition merged into fewer (see `merge_small_files`).
    pub files_merged: usize,
}

/// Counts and bytes of one tier.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TierStats {
    pub memories: usize,
    /// Hot and warm: the tier's vector graph in memory. Cold: the Parquet files.
    pub bytes: u64,
}

impl Engine {
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
        let mut to_cold: BTreeMap<(String, String), Vec<(i64, i64)>> = BTreeMap::new();
        {
            let state = self.indexes().read();
            for (id, d) in state.filters.docs() {
                let (tenant, system, kind) = state.filters.names(id);
                let target = self.tiers().tier_for(kind, d.created_at, now);
                if d.tier == Tier::Hot && target != Tier::Hot {
                    to_warm.push(i64::from(id));
                }
                if target == Tier::Cold {
                    to_cold
                        .entry((tenant.to_string(), system.to_string()))
                        .or_default()
                        .push((d.created_at, i64::from(id)));
                }
            }
        }
        for chunk in to_warm.chunks(1000) {
            report.to_warm += self.move_between(chunk, Tier::Hot, Tier::Warm)?;
        }
        if let Some(cold) = &self.cold {
            // The lock is taken per step, not per run: a write to a cold key waits for
            // one step (a thaw needs the lock), never for a whole archive's move.
            report.orphans_removed = cold.sweep_orphans(self)?;
            for mut by_time in to_cold.into_values() {
                // In time order, a freeze step spans one or two months, so each month
                // partition gets few, full files (in table order, every step would
                // leave a small file in every month).
                by_time.sort_unstable();
                let seqs: Vec<i64> = by_time.into_iter().map(|(_, seq)| seq).collect();
                for chunk in seqs.chunks(self.tiers().file_rows) {
                    let (moved, files) = cold.freeze(self, chunk)?;
                    report.to_cold += moved;
                    report.files_written += files;
                }
            }
            // The moves are committed; a merge failure is retried next run.
            report.files_merged = cold.merge_small_files(self, self.tiers().file_rows).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "merging small cold files failed; the next aging run retries");
                0
            });
        }
        if report != TierReport::default() {
            tracing::info!(?report, "tiers aged");
        }
        Ok(report)
    }

    /// Move memories between hot and warm (same store, other vector graph).
    fn move_between(&self, rows: &[i64], from: Tier, to: Tier) -> Result<usize> {
        self.commit(|tx| {
            let mut moved = 0;
            for &row in rows {
                moved += usize::from(tx.set_tier(row, from, to)?.is_some());
            }
            Ok(moved)
        })
    }

    /// Memories and bytes in the cold tier, every tenant (from the catalog's file
    /// records: no row is counted one by one).
    pub fn cold_totals(&self) -> Result<(u64, u64)> {
        self.store().cold_totals()
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
        let (groups, bytes) = self.store().cold_groups(&scope.tenant)?;
        let memories = groups
            .iter()
            .filter(|g| scope.admits(&scope.tenant, g.user_id.as_deref(), &g.system_id, &g.kind))
            .map(|g| g.memories)
            .sum();
        out.insert(Tier::Cold, TierStats { memories, bytes: if scope.is_whole_tenant() { bytes } else { 0 } });
        Ok(out)
    }
}
