//! What a caller may see or change: a [`Scope`] is a tenant plus optional narrowing
//! (one user, some source systems, some kinds). The engine takes one on every read
//! and write, so no transport can forget a tenant or a user restriction.

use crate::memory::Memory;

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
