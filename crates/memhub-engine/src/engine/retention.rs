//! Visibility over time (expiry, retention policies) and removal: the purge job and erasure.

use super::*;

impl Engine {
    /// Whether a memory of this tenant, system and kind created at `created_at` is
    /// older than its kind's retention at `now`.
    pub(crate) fn past_retention(&self, tenant: &str, system_id: &str, kind: &str, created_at: i64, now: i64) -> bool {
        let state = self.indexes.read();
        memhub_types::access::past_retention(state.filters.retention(), tenant, system_id, kind, created_at, now)
    }

    /// Whether `m` is past its `expires_at` or its kind's retention at `now`.
    pub(super) fn expired(&self, m: &Memory, now: i64) -> bool {
        memhub_types::access::expired(m, self.indexes.read().filters.retention(), now)
    }

    pub(crate) fn visible(&self, scope: &Scope, m: &Memory, now: i64) -> bool {
        scope.permits(m) && !self.expired(m, now)
    }

    /// The retention policies in force, copied: rows outside the indexes (the cold
    /// tier) are checked against them through [`memhub_types::Selection`] without
    /// holding the index lock row by row.
    pub(crate) fn retention_policies(&self) -> Vec<memhub_types::RetentionPolicy> {
        self.indexes.read().filters.retention().to_vec()
    }

    /// Load the stored retention policies after the configured ones.
    pub(super) fn load_retention(&self) -> Result<()> {
        let stored = self.store.retention_policies()?;
        self.indexes.set_retention(self.config.retention.iter().cloned().chain(stored).collect());
        Ok(())
    }

    /// The retention policies that apply in `tenant`: the configured ones, then the
    /// tenant's own.
    pub fn retention(&self, tenant: &str) -> Vec<RetentionPolicy> {
        let state = self.indexes.read();
        state.filters.retention().iter().filter(|p| p.tenant.as_deref().is_none_or(|t| t == tenant)).cloned().collect()
    }

    /// Replace `tenant`'s own retention policies (the configured ones stay). Memories
    /// past a new TTL are invisible at once and purged by [`purge_expired`](Self::purge_expired).
    pub fn set_retention(&self, tenant: &str, policies: Vec<RetentionPolicy>) -> Result<Vec<RetentionPolicy>> {
        for (i, p) in policies.iter().enumerate() {
            if p.kind.trim().is_empty() {
                return Err(Error::field(ErrorCode::InvalidField, format!("policies[{i}].kind"), "must not be empty"));
            }
            if p.tenant.as_deref().is_some_and(|t| t != tenant) {
                return Err(Error::field(
                    ErrorCode::InvalidField,
                    format!("policies[{i}].tenant"),
                    "must be your tenant",
                ));
            }
        }
        self.commit(|tx| tx.set_retention(tenant, &policies))?;
        self.load_retention()?;
        Ok(self.retention(tenant))
    }

    /// Delete the memories at `seqs` (and their history) for which `still` holds when
    /// the deleting transaction looks at them. The one removal path for purge and
    /// erasure: a tier that keeps copies (cold storage) must delete there too.
    pub(super) fn remove_where(&self, seqs: &[i64], op: ChangeOp, still: impl Fn(&Memory) -> bool) -> Result<Removed> {
        let mut removed = Removed::default();
        for chunk in seqs.chunks(1000) {
            let (done, history) = self.commit(|tx| {
                let (mut done, mut history) = (0, 0);
                for &row in chunk {
                    if let Some(m) = tx.find_by_row(row)?.filter(|m| still(m)) {
                        history += tx.remove(row, &m, op)?;
                        done += 1;
                    }
                }
                Ok((done, history))
            })?;
            removed.memories += done;
            removed.history_versions += history;
        }
        Ok(removed)
    }

    /// Remove every memory past its `expires_at` or its kind's retention, with its
    /// history, from the store and the indexes. The background purge job calls this.
    pub fn purge_expired(&self) -> Result<Removed> {
        let now = now_micros();
        // Memories past their expires_at wait out the soft-delete grace period (0 when off).
        let grace = i64::try_from(self.config.soft_delete_seconds).unwrap_or(i64::MAX).saturating_mul(1_000_000);
        let expired_before = now.saturating_sub(grace);
        let seqs: Vec<i64> =
            self.indexes.read().filters.expired(now, expired_before).into_iter().map(i64::from).collect();
        // The same rule as `FilterTable::expired`, checked again in the deleting transaction.
        let mut removed = self.remove_where(&seqs, ChangeOp::Purged, |m| {
            m.expires_at.is_some_and(|t| t <= expired_before)
                || self.past_retention(&m.tenant, &m.system_id, &m.kind, m.created_at, now)
        })?;
        if let Some(cold) = &self.cold {
            removed.memories += cold.purge(self, |e| {
                e.expires_at.is_some_and(|t| t <= expired_before)
                    || self.past_retention(&e.tenant, &e.system_id, &e.kind, e.created_at, now)
            })?;
        }
        self.prune_changes(now)?;
        if removed == Removed::default() {
            return Ok(removed);
        }
        tracing::info!(
            memories = removed.memories,
            history_versions = removed.history_versions,
            "purged expired memories"
        );
        Ok(removed)
    }

    /// Drop change-log entries older than `engine.events.retention_seconds` (the
    /// purge job's other half). A feed reader that last saw one of them gets `reset`.
    pub fn prune_changes(&self, now: i64) -> Result<usize> {
        if self.store.read_only() {
            return Ok(0);
        }
        let kept = i64::try_from(self.config.events.retention_seconds).unwrap_or(i64::MAX).saturating_mul(1_000_000);
        let pruned = self.store.prune_changes(now.saturating_sub(kept))?;
        if pruned > 0 {
            self.recent.forget_through(self.store.pruned_through()?);
            tracing::info!(changes = pruned, "pruned the change log");
        }
        Ok(pruned)
    }

    /// Erase every memory of `scope` matching `filter` (expired ones included) with
    /// its history, then compact the store and the text index so the erased text is
    /// gone from disk.
    pub fn erase(&self, scope: &Scope, filter: &MemoryFilter) -> Result<Removed> {
        let seqs: Vec<i64> = {
            let state = self.indexes.read();
            let plan = state.filters.plan(scope, filter, i64::MIN);
            plan.ids().map(i64::from).collect()
        };
        let mut removed = self.remove_where(&seqs, ChangeOp::Erased, |m| scope.permits(m))?;
        // Cold files holding matches are rewritten without them (and the old objects deleted).
        if let Some(cold) = &self.cold {
            removed.memories += cold.erase(self, scope, filter, &self.retention_policies())?;
        }
        self.compact()?;
        Ok(removed)
    }
}
