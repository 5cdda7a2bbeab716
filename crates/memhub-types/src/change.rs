//! The change stream: every committed change to the store as one typed, ordered
//! event. The store assigns each change its sequence number in the transaction that
//! makes it; the derived indexes, the embedding queue, the metrics and the change
//! feed all consume the same stream.

use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::access::Scope;
use crate::memory::Memory;

/// What a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChangeOp {
    /// A new memory.
    Created,
    /// A new version of a memory (the old one kept in history).
    Updated,
    /// Deleted by a client, with its history.
    Deleted,
    /// Moved out of the store into a cold Parquet file (still live, still readable).
    Frozen,
    /// Brought back from a cold file into the store (as warm).
    Thawed,
    /// Moved between the hot and warm tiers (same store, other vector graph).
    Moved,
    /// The server stored a vector for an unchanged text (no new version).
    Embedded,
    /// Removed by the retention purge (past `expires_at` or its kind's retention).
    Purged,
    /// Removed by an erasure request.
    Erased,
    /// A knowledge-graph entity was created or changed.
    EntityUpserted,
    /// A knowledge-graph entity was removed.
    EntityDeleted,
    /// A knowledge-graph relation was created or changed.
    RelationUpserted,
    /// A knowledge-graph relation was removed.
    RelationDeleted,
}

impl ChangeOp {
    pub const ALL: [ChangeOp; 13] = [
        ChangeOp::Created,
        ChangeOp::Updated,
        ChangeOp::Deleted,
        ChangeOp::Frozen,
        ChangeOp::Thawed,
        ChangeOp::Moved,
        ChangeOp::Embedded,
        ChangeOp::Purged,
        ChangeOp::Erased,
        ChangeOp::EntityUpserted,
        ChangeOp::EntityDeleted,
        ChangeOp::RelationUpserted,
        ChangeOp::RelationDeleted,
    ];

    /// The name used on the wire and in the store's change log.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeOp::Created => "created",
            ChangeOp::Updated => "updated",
            ChangeOp::Deleted => "deleted",
            ChangeOp::Frozen => "frozen",
            ChangeOp::Thawed => "thawed",
            ChangeOp::Moved => "moved",
            ChangeOp::Embedded => "embedded",
            ChangeOp::Purged => "purged",
            ChangeOp::Erased => "erased",
            ChangeOp::EntityUpserted => "entity_upserted",
            ChangeOp::EntityDeleted => "entity_deleted",
            ChangeOp::RelationUpserted => "relation_upserted",
            ChangeOp::RelationDeleted => "relation_deleted",
        }
    }

    pub fn parse(s: &str) -> Option<ChangeOp> {
        ChangeOp::ALL.into_iter().find(|op| op.as_str() == s)
    }

    /// Whether the memory is in the store (and so in the indexes) after this change.
    pub fn leaves_memory_in_store(self) -> bool {
        matches!(self, ChangeOp::Created | ChangeOp::Updated | ChangeOp::Thawed | ChangeOp::Moved | ChangeOp::Embedded)
    }

    /// Whether the change is about a knowledge-graph entity or relation (not a memory).
    pub fn is_graph(self) -> bool {
        matches!(
            self,
            ChangeOp::EntityUpserted | ChangeOp::EntityDeleted | ChangeOp::RelationUpserted | ChangeOp::RelationDeleted
        )
    }
}

impl std::fmt::Display for ChangeOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One committed change. Holds ids and placement only, never content: the log
/// outlives erasures, so an erased memory's events must carry nothing it said.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Change {
    /// The store's sequence number: strictly increasing in commit order.
    pub seq: i64,
    pub op: ChangeOp,
    pub tenant: String,
    /// The memory's server id (or the entity's / relation's for graph changes).
    pub id: Uuid,
    /// The client's key (absent for graph changes and for erasures, whose events
    /// keep the server id only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The memory's owner, so a user-scoped reader sees only its own memories' events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The memory's version after the change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// When the change committed (µs since the epoch on the store side; ISO-8601 on the wire).
    #[serde(with = "crate::time::serde_micros")]
    #[schema(value_type = String, format = DateTime)]
    pub at: i64,
    /// The memory's row number in the store (its key in the derived indexes).
    #[serde(skip)]
    pub row: Option<i64>,
    /// The memory as it is after the change, for consumers in this process (the
    /// indexes, the embedding queue): set on changes that leave it in the store.
    #[serde(skip)]
    pub memory: Option<Arc<Memory>>,
}

impl Change {
    /// The change's wire form, as the feed and webhooks send it: its JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("changes serialize")
    }

    /// Whether a reader with `scope` may see this change: the same rule as reading
    /// the memory. Graph changes carry no owner or system, so only readers of the
    /// whole tenant see them.
    pub fn visible_to(&self, scope: &Scope) -> bool {
        if self.op.is_graph() {
            return self.tenant == scope.tenant && scope.is_whole_tenant();
        }
        scope.admits(
            &self.tenant,
            self.user_id.as_deref(),
            self.system_id.as_deref().unwrap_or_default(),
            self.kind.as_deref().unwrap_or_default(),
        )
    }
}

/// What a reader of the change log asks for (beyond its scope).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, ToSchema)]
pub struct ChangeFilter {
    pub system_id: Option<String>,
    pub kind: Option<String>,
    pub user_id: Option<String>,
    /// Only these operations (all when absent).
    pub ops: Option<Vec<ChangeOp>>,
}

impl ChangeFilter {
    pub fn matches(&self, c: &Change) -> bool {
        let eq = |want: &Option<String>, have: &Option<String>| want.is_none() || want == have;
        eq(&self.system_id, &c.system_id)
            && eq(&self.kind, &c.kind)
            && eq(&self.user_id, &c.user_id)
            && self.ops.as_ref().is_none_or(|ops| ops.contains(&c.op))
    }
}

/// A change in its wire form ([`Change::to_json`]), rendered once and shared by
/// every reader that follows the log closely (each open feed stream would otherwise
/// serialize every change again).
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedChange {
    pub seq: i64,
    pub op: ChangeOp,
    pub json: Arc<str>,
}

impl From<&Change> for RenderedChange {
    fn from(c: &Change) -> Self {
        RenderedChange { seq: c.seq, op: c.op, json: c.to_json().into() }
    }
}

/// A page of the change log.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ChangePage {
    pub changes: Vec<Change>,
    /// The sequence number to pass as `after` for the next page: the last change
    /// looked at, visible or not (so a reader skips what it may not see only once).
    pub next_after: i64,
    /// True when changes after `after` were already pruned: the reader missed some
    /// and must list again (the feed sends a `reset` event).
    pub reset: bool,
}
