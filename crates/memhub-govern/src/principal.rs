//! Who is calling and what their role lets them do. The role table lives here and
//! nowhere else; the engine enforces the resulting [`Access`] on every read and write.

use memhub_types::Access;
use memhub_types::{Error, Result, Scope};
use serde::{Deserialize, Serialize};

/// The roles of the Memory V2 plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything within its tenant, plus keys, schemas, retention, audit and erasure.
    Admin,
    /// Reads its whole tenant; writes `insight` and `decision` (and kinds the config grants).
    Manager,
    /// Reads and writes only memories whose `user_id` is its own.
    User,
    /// An ingesting system: writes only for its `system_id`s; reads only if granted.
    Service,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Manager => "manager",
            Role::User => "user",
            Role::Service => "service",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "admin" => Ok(Role::Admin),
            "manager" => Ok(Role::Manager),
            "user" => Ok(Role::User),
            "service" => Ok(Role::Service),
            other => Err(format!("unknown role {other:?}: expected admin, manager, user or service")),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an operation needs beyond reading or writing memories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Read memories (search, list, get, history, stats, export).
    Read,
    /// Store memories (the write scope still applies per memory).
    Write,
    /// Update or delete a memory by id: needs both reading it (the answer shows it)
    /// and writing.
    Change,
    /// Write knowledge-graph entities and relations (no per-user field: admin, manager).
    Graph,
    /// Register schemas, manage keys, set retention, read the audit log, erase.
    Administer,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    /// For the audit log: `key:mh_...`, `jwt:<sub>`, `open` or `local`.
    pub id: String,
    pub role: Role,
    pub tenant: String,
    /// The caller's user (`sub`): a `user` reads and writes only these memories.
    pub user_id: Option<String>,
    /// Narrows to these source systems (a `service` writes only these).
    pub systems: Option<Vec<String>>,
    /// Narrows to these kinds.
    pub kinds: Option<Vec<String>>,
    /// A `service` reads only when this is set.
    pub can_read: bool,
    /// An admin that may act in any tenant (named by `X-Memhub-Tenant`).
    pub superadmin: bool,
}

fn intersect(a: Option<&[String]>, b: Option<&[String]>) -> Option<Vec<String>> {
    match (a, b) {
        (None, None) => None,
        (Some(x), None) | (None, Some(x)) => Some(x.to_vec()),
        (Some(x), Some(y)) => Some(x.iter().filter(|k| y.contains(k)).cloned().collect()),
    }
}

impl Principal {
    /// The id of [`Principal::open`] (keys are `key:…`, JWT subjects `jwt:…`).
    pub const OPEN_ID: &'static str = "open";

    /// The caller with no credentials in `open` mode: an admin of every tenant, as
    /// memhub behaved before authentication existed.
    pub fn open() -> Self {
        Principal {
            id: Self::OPEN_ID.into(),
            role: Role::Admin,
            tenant: memhub_types::DEFAULT_TENANT.into(),
            user_id: None,
            systems: None,
            kinds: None,
            can_read: true,
            superadmin: true,
        }
    }

    /// Whether the role allows `p` at all (scopes then narrow it per memory).
    pub fn allows(&self, p: Permission) -> bool {
        if p == Permission::Change {
            return self.allows(Permission::Read) && self.allows(Permission::Write);
        }
        match (self.role, p) {
            (Role::Admin, _) => true,
            (Role::Manager, Permission::Read | Permission::Write | Permission::Graph) => true,
            (Role::User, Permission::Read | Permission::Write) => true,
            (Role::Service, Permission::Write) => true,
            (Role::Service, Permission::Read) => self.can_read,
            _ => false,
        }
    }

    /// Refuse unless the role allows `p`.
    pub fn require(&self, p: Permission) -> Result<()> {
        if self.allows(p) {
            return Ok(());
        }
        let what = match p {
            Permission::Read => "read memories",
            Permission::Write => "write memories",
            Permission::Change => "change memories it cannot read",
            Permission::Graph => "write the knowledge graph",
            Permission::Administer => "administer this tenant",
        };
        Err(Error::forbidden(format!("role {} may not {what}", self.role)))
    }

    /// The tenant a request acts in: the principal's own, or, for a superadmin,
    /// the one it names.
    pub fn tenant_for(&self, requested: Option<&str>) -> Result<String> {
        match requested.filter(|t| !t.is_empty()) {
            Some(t) if t != self.tenant && !self.superadmin => {
                Err(Error::forbidden(format!("you may not act in tenant {t:?} (only a superadmin may)")))
            }
            Some(t) => Ok(t.to_string()),
            None => Ok(self.tenant.clone()),
        }
    }

    /// The read and write scopes in `tenant`. `manager_write_kinds` are the kinds a
    /// manager may write.
    pub fn access(&self, tenant: &str, manager_write_kinds: &[String]) -> Access {
        let user_id = (self.role == Role::User).then(|| self.user_id.clone().unwrap_or_default());
        // A service with no systems writes nowhere.
        let systems = match self.role {
            Role::Service => Some(self.systems.clone().unwrap_or_default()),
            _ => self.systems.clone(),
        };
        let read = Scope {
            tenant: tenant.into(),
            user_id: user_id.clone(),
            systems: systems.clone(),
            kinds: self.kinds.clone(),
        };
        let write_kinds = match self.role {
            Role::Manager => intersect(self.kinds.as_deref(), Some(manager_write_kinds)),
            _ => self.kinds.clone(),
        };
        let write = Scope { tenant: tenant.into(), user_id, systems, kinds: write_kinds };
        Access { read, write }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(role: Role) -> Principal {
        Principal {
            id: "t".into(),
            role,
            tenant: "acme".into(),
            user_id: Some("ann".into()),
            systems: None,
            kinds: None,
            can_read: false,
            superadmin: false,
        }
    }

    #[test]
    fn the_role_table() {
        use Permission::*;
        let table = [
            (Role::Admin, [true, true, true, true]),
            (Role::Manager, [true, true, true, false]),
            (Role::User, [true, true, false, false]),
            (Role::Service, [false, true, false, false]),
        ];
        for (role, expected) in table {
            let p = principal(role);
            let got = [Read, Write, Graph, Administer].map(|x| p.allows(x));
            assert_eq!(p.allows(Change), got[0] && got[1], "{role}: change = read and write");
            assert_eq!(got, expected, "{role}");
        }
        let reader = Principal { can_read: true, ..principal(Role::Service) };
        assert!(reader.allows(Read), "a service reads when granted");
    }

    #[test]
    fn scopes_follow_the_role() {
        let kinds = vec!["insight".to_string(), "decision".to_string()];
        let user = principal(Role::User).access("acme", &kinds);
        assert_eq!(user.read.user_id.as_deref(), Some("ann"));
        assert_eq!(user.write.user_id.as_deref(), Some("ann"));
        let manager = principal(Role::Manager).access("acme", &kinds);
        assert!(manager.read.is_whole_tenant());
        assert_eq!(manager.write.kinds.as_deref(), Some(&kinds[..]));
        let narrowed = Principal { kinds: Some(vec!["insight".into(), "chat".into()]), ..principal(Role::Manager) };
        assert_eq!(narrowed.access("acme", &kinds).write.kinds, Some(vec!["insight".to_string()]));
        let service = principal(Role::Service).access("acme", &kinds);
        assert_eq!(service.write.systems, Some(vec![]), "no systems: writes nowhere");
        let admin = principal(Role::Admin).access("acme", &kinds);
        assert!(admin.read.is_whole_tenant() && admin.write.is_whole_tenant());
    }

    #[test]
    fn only_a_superadmin_changes_tenant() {
        let admin = principal(Role::Admin);
        assert_eq!(admin.tenant_for(None).unwrap(), "acme");
        assert_eq!(admin.tenant_for(Some("acme")).unwrap(), "acme");
        assert_eq!(admin.tenant_for(Some("globex")).unwrap_err().code, memhub_types::ErrorCode::Forbidden);
        let root = Principal { superadmin: true, ..admin };
        assert_eq!(root.tenant_for(Some("globex")).unwrap(), "globex");
    }
}
