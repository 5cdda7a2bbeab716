//! Governance for memhub: who a caller is ([`Principal`], from an API key or a JWT),
//! what their role lets them do (turned into the engine's read and write scopes),
//! and the tamper-evident audit log of every access.

pub mod audit;
pub mod jwt;
pub mod keys;
pub mod principal;

pub use audit::{
    AuditEvent, AuditLog, AuditQuery, AuditRecord, AuditRow, AuditTable, Outcome, SqliteAudit, VerifyReport,
};
pub use jwt::{JwtConfig, JwtVerifier};
pub use keys::{CreatedKey, KeyInfo, KeyRow, KeyStore, KeyTable, NewKey, SqliteKeys};
pub use principal::{Permission, Principal, Role};
