//! What a caller may see or change: a [`Scope`] is a tenant plus optional narrowing
//! (one user, some source systems, some kinds). The engine takes one on every read
//! and write, so no transport can forget a tenant or a user restriction.

use crate::memory::{Memory, MemoryFilter};
use crate::retention::RetentionPolicy;

/// A tenant and the memories within it that a caller may reach.
///
/// `None` in a narrowing field means "no restriction"; `Some(vec![])` means
/// "nothing" (e.g. a service key with no systems cannot write anywhere).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub tenant: String,
    /// Only memories whose `user_id` is this one.
    pub user_id: Option<String>,
    /// Only memories from these source systems.
    pub systems: Option<Vec<String>>,
    /// Only memories of these kinds.
    pub kinds: Option<Vec<String>>,
}

impl Scope {
    /// Everything in `tenant`.
    pub fn tenant(tenant: impl Into<String>) -> Self {
        Scope { tenant: tenant.into(), user_id: None, systems: None, kinds: None }
    }

    /// Whether nothing narrows the tenant.
    pub fn is_whole_tenant(&self) -> bool {
        self.user_id.is_none() && self.systems.is_none() && self.kinds.is_none()
    }

    /// Whether a memory with these fields is within the scope.
    pub fn admits(&self, tenant: &str, user_id: Option<&str>, system_id: &str, kind: &str) -> bool {
        tenant == self.tenant
            && self.user_id.as_deref().is_none_or(|u| user_id == Some(u))
            && self.systems.as_ref().is_none_or(|s| s.iter().any(|x| x == system_id))
            && self.kinds.as_ref().is_none_or(|k| k.iter().any(|x| x == kind))
    }

    /// Whether `m` is within the scope.
    pub fn permits(&self, m: &Memory) -> bool {
        self.admits(&m.tenant, m.user_id.as_deref(), &m.system_id, &m.kind)
    }

    /// Why `m` is outside the scope, for a 403 message (never names another tenant's data).
    pub fn refusal(&self, m: &Memory) -> Option<String> {
        if m.tenant != self.tenant {
            return Some(format!("tenant {:?} is not yours", m.tenant));
        }
        if let Some(u) = &self.user_id {
            if m.user_id.as_deref() != Some(u) {
                return Some(format!("you may only write memories with user_id {u:?}"));
            }
        }
        if let Some(s) = &self.systems {
            if !s.contains(&m.system_id) {
                return Some(format!("system_id {:?} is outside your systems {s:?}", m.system_id));
            }
        }
        if let Some(k) = &self.kinds {
            if !k.contains(&m.kind) {
                return Some(format!("kind {:?} is outside the kinds you may write {k:?}", m.kind));
            }
        }
        None
    }
}

/// The scopes a caller reads and writes in: they differ for a manager, who reads the
/// whole tenant but writes only some kinds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub read: Scope,
    pub write: Scope,
}

impl Access {
    /// Read and write everything in `tenant`.
    pub fn tenant(tenant: &str) -> Self {
        Access { read: Scope::tenant(tenant), write: Scope::tenant(tenant) }
    }
}

/// What a read selects: the memories within `scope` that match `filter` and are
/// still visible at `now` (before their `expires_at` and within their kind's
/// retention). This is the one definition of "visible and matching", row by row;
/// the engine's filter table compiles the same question into bitmaps for the
/// indexed tiers, and a property test holds the two to the same answers.
#[derive(Debug, Clone, Copy)]
pub struct Selection<'a> {
    pub scope: &'a Scope,
    pub filter: &'a MemoryFilter,
    /// The retention policies in force.
    pub retention: &'a [RetentionPolicy],
    /// Microseconds; `i64::MIN` selects expired memories too (erasure must reach them).
    pub now: i64,
}

impl Selection<'_> {
    /// Whether `m` is selected.
    pub fn selects(&self, m: &Memory) -> bool {
        self.scope.permits(m) && self.filter.matches(m) && !expired(m, self.retention, self.now)
    }
}

/// Whether `m` is past its `expires_at` or its kind's retention at `now`.
pub fn expired(m: &Memory, retention: &[RetentionPolicy], now: i64) -> bool {
    m.expires_at.is_some_and(|t| t <= now)
        || past_retention(retention, &m.tenant, &m.system_id, &m.kind, m.created_at, now)
}

/// Whether a memory with these fields is past the retention of a policy in `retention` at `now`.
pub fn past_retention(
    retention: &[RetentionPolicy],
    tenant: &str,
    system_id: &str,
    kind: &str,
    created_at: i64,
    now: i64,
) -> bool {
    retention.iter().any(|p| p.covers(tenant, system_id, kind) && created_at < p.cutoff(now))
}

impl From<&str> for Scope {
    fn from(tenant: &str) -> Self {
        Scope::tenant(tenant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_narrowing_applies() {
        let s = Scope {
            tenant: "t".into(),
            user_id: Some("ann".into()),
            systems: Some(vec!["slack".into()]),
            kinds: Some(vec!["insight".into()]),
        };
        assert!(s.admits("t", Some("ann"), "slack", "insight"));
        assert!(!s.admits("u", Some("ann"), "slack", "insight"), "other tenant");
        assert!(!s.admits("t", Some("bob"), "slack", "insight"), "other user");
        assert!(!s.admits("t", None, "slack", "insight"), "no user");
        assert!(!s.admits("t", Some("ann"), "github", "insight"), "other system");
        assert!(!s.admits("t", Some("ann"), "slack", "chat"), "other kind");
        let none = Scope { systems: Some(vec![]), ..Scope::tenant("t") };
        assert!(!none.admits("t", None, "slack", "chat"), "an empty list admits nothing");
        assert!(Scope::tenant("t").admits("t", None, "x", "y"));
    }
}
