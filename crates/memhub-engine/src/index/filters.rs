//! The filter table: what every retriever needs to decide "visible and matching"
//! without touching the store. Field values are interned to integers and every
//! equality field keeps a roaring bitmap of the memories (by store `seq`) that have
//! each value, so a filter compiles to one bitmap plus a few per-memory checks
//! (time range, expiry, metadata) — and the bitmap's size is the selectivity the
//! vector planner needs.
//!
//! Rebuilt from the store on open (it reads only metadata columns, not content or
//! vectors) and updated after each committed write.

use std::collections::{BTreeMap, HashMap};

use memhub_types::{Error, ErrorCode, Memory, MemoryFilter, Result, RetentionPolicy, Scope, Tier};
use roaring::RoaringBitmap;
use serde_json::Value;

/// A memory's store sequence number as the indexes key it.
pub type DocId = u32;

/// Convert a store `seq` to the indexes' 32-bit key.
pub fn doc_id(seq: i64) -> Result<DocId> {
    DocId::try_from(seq).map_err(|_| {
        Error::new(ErrorCode::InternalError, format!("store sequence {seq} exceeds the index's 32-bit key space"))
    })
}

/// The equality-filterable fields, in [`DocMeta::fields`] order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Field {
    Tenant,
    System,
    Kind,
    User,
    Agent,
    Session,
    Project,
    Tag,
}

impl Field {
    /// The prefix of this field's terms in the text index's filter field.
    fn code(self) -> char {
        match self {
            Field::Tenant => 't',
            Field::System => 's',
            Field::Kind => 'k',
            Field::User => 'u',
            Field::Agent => 'a',
            Field::Session => 'e',
            Field::Project => 'p',
            Field::Tag => 'g',
        }
    }
}

/// A filter term as the text index stores it: field code, `:`, value.
fn filter_term(field: Field, value: &str) -> String {
    format!("{}:{value}", field.code())
}

const SCALAR_FIELDS: [Field; 7] =
    [Field::Tenant, Field::System, Field::Kind, Field::User, Field::Agent, Field::Session, Field::Project];

/// `0` means "no value" in interned slots.
const NONE: u32 = 0;

#[derive(Debug, Default)]
struct Interner {
    ids: HashMap<Box<str>, u32>,
    names: Vec<Box<str>>,
}

impl Interner {
    fn intern(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        self.names.push(s.into());
        let id = self.names.len() as u32;
        self.ids.insert(s.into(), id);
        id
    }

    fn get(&self, s: &str) -> Option<u32> {
        self.ids.get(s).copied()
    }

    fn name(&self, id: u32) -> &str {
        id.checked_sub(1).and_then(|i| self.names.get(i as usize)).map_or("", |s| s)
    }
}

/// What the table keeps of one memory.
#[derive(Debug, Clone)]
pub struct DocMeta {
    /// Interned tenant, system, kind, user, agent, session, project (`0` = none).
    fields: [u32; 7],
    tags: Box<[u32]>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    /// Interned `(key, canonical JSON value)` of top-level scalar metadata.
    metadata: Box<[(u32, u32)]>,
    /// The first 8 bytes of the content hash: enough to collapse duplicates.
    pub content_key: u64,
    /// Whether the memory has a vector of the engine's model.
    pub has_vector: bool,
    /// Hot or warm (cold memories are not in the table).
    pub tier: Tier,
}

/// The metadata the table needs, as read from a memory or from the store's columns.
pub struct MetaSource<'a> {
    pub tenant: &'a str,
    pub system_id: &'a str,
    pub kind: &'a str,
    pub user_id: Option<&'a str>,
    pub agent_id: Option<&'a str>,
    pub session_id: Option<&'a str>,
    pub project: Option<&'a str>,
    pub tags: &'a [String],
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub metadata: &'a serde_json::Map<String, Value>,
    pub content_hash: &'a str,
    pub has_vector: bool,
    pub tier: Tier,
}

impl<'a> MetaSource<'a> {
    pub fn of(m: &'a Memory, model: &str) -> Self {
        MetaSource {
            tenant: &m.tenant,
            system_id: &m.system_id,
            kind: &m.kind,
            user_id: m.user_id.as_deref(),
            agent_id: m.agent_id.as_deref(),
            session_id: m.session_id.as_deref(),
            project: m.project.as_deref(),
            tags: &m.tags,
            created_at: m.created_at,
            expires_at: m.expires_at,
            metadata: &m.metadata,
            content_hash: &m.content_hash,
            has_vector: m.embedding.is_some() && m.embedding_model.as_deref() == Some(model),
            tier: m.tier,
        }
    }

    /// The metadata of a memory as the store lists it when the table is rebuilt.
    pub fn of_row(r: &'a crate::store::MetaRow) -> Self {
        MetaSource {
            tenant: &r.tenant,
            system_id: &r.system_id,
            kind: &r.kind,
            user_id: r.user_id.as_deref(),
            agent_id: r.agent_id.as_deref(),
            session_id: r.session_id.as_deref(),
            project: r.project.as_deref(),
            tags: &r.tags,
            created_at: r.created_at,
            expires_at: r.expires_at,
            metadata: &r.metadata,
            content_hash: &r.content_hash,
            has_vector: r.has_vector,
            tier: r.tier,
        }
    }
}

pub(crate) fn content_key(hash: &str) -> u64 {
    u64::from_str_radix(hash.get(..16).unwrap_or(hash), 16).unwrap_or_else(|_| {
        // Not hex (imported data): fold the bytes.
        hash.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
    })
}

/// The filter table over all memories of the store.
#[derive(Debug, Default)]
pub struct FilterTable {
    interner: Interner,
    docs: HashMap<DocId, DocMeta>,
    postings: HashMap<(Field, u32), RoaringBitmap>,
    /// Memories with an `expires_at`: only these need the expiry check.
    expiring: RoaringBitmap,
    /// Memories in the warm tier (the rest are hot).
    warm: RoaringBitmap,
    /// Retention policies: memories older than their kind's TTL are invisible.
    retention: Vec<RetentionPolicy>,
}

impl FilterTable {
    pub fn len(&self) -> usize {
        self.docs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    pub fn get(&self, id: DocId) -> Option<&DocMeta> {
        self.docs.get(&id)
    }

    /// Tenant, system and kind of memory `id` (empty strings if unknown).
    pub fn names(&self, id: DocId) -> (&str, &str, &str) {
        match self.docs.get(&id) {
            Some(d) => {
                (self.interner.name(d.fields[0]), self.interner.name(d.fields[1]), self.interner.name(d.fields[2]))
            }
            None => ("", "", ""),
        }
    }

    pub fn docs(&self) -> impl Iterator<Item = (DocId, &DocMeta)> {
        self.docs.iter().map(|(id, d)| (*id, d))
    }

    /// Insert or replace the entry for `id`.
    pub fn upsert(&mut self, id: DocId, m: &MetaSource<'_>) {
        self.remove(id);
        let scalars = [Some(m.tenant), Some(m.system_id), Some(m.kind), m.user_id, m.agent_id, m.session_id, m.project];
        let mut fields = [NONE; 7];
        for ((slot, field), value) in fields.iter_mut().zip(SCALAR_FIELDS).zip(scalars) {
            if let Some(v) = value {
                *slot = self.interner.intern(v);
                self.postings.entry((field, *slot)).or_default().insert(id);
            }
        }
        let tags: Box<[u32]> = m.tags.iter().map(|t| self.interner.intern(t)).collect();
        for &t in &*tags {
            self.postings.entry((Field::Tag, t)).or_default().insert(id);
        }
        let metadata = m
            .metadata
            .iter()
            .filter(|(_, v)| !(v.is_object() || v.is_array()))
            .map(|(k, v)| (self.interner.intern(k), self.interner.intern(&v.to_string())))
            .collect();
        if m.expires_at.is_some() {
            self.expiring.insert(id);
        }
        if m.tier == Tier::Warm {
            self.warm.insert(id);
        }
        self.docs.insert(
            id,
            DocMeta {
                fields,
                tags,
                created_at: m.created_at,
                expires_at: m.expires_at,
                metadata,
                content_key: content_key(m.content_hash),
                has_vector: m.has_vector,
                tier: m.tier,
            },
        );
    }

    pub fn remove(&mut self, id: DocId) {
        let Some(d) = self.docs.remove(&id) else { return };
        let keys = SCALAR_FIELDS.iter().zip(d.fields).filter(|(_, v)| *v != NONE).map(|(f, v)| (*f, v));
        for key in keys.chain(d.tags.iter().map(|t| (Field::Tag, *t))) {
            if let Some(b) = self.postings.get_mut(&key) {
                b.remove(id);
                if b.is_empty() {
                    self.postings.remove(&key);
                }
            }
        }
        self.expiring.remove(id);
        self.warm.remove(id);
    }

    /// How many memories are in each of the hot and warm tiers.
    pub fn tier_counts(&self) -> (usize, usize) {
        let warm = self.warm.len() as usize;
        (self.docs.len() - warm, warm)
    }

    /// The equality-filter terms of a memory, for the text index (which uses the
    /// narrowest one of a plan to drive selective searches).
    pub fn filter_terms(&self, id: DocId) -> Vec<String> {
        let Some(d) = self.docs.get(&id) else { return Vec::new() };
        let scalars = SCALAR_FIELDS.iter().zip(d.fields).filter(|(_, v)| *v != NONE).map(|(f, v)| (*f, v));
        scalars
            .chain(d.tags.iter().map(|t| (Field::Tag, *t)))
            .map(|(f, v)| filter_term(f, self.interner.name(v)))
            .collect()
    }

    pub fn set_has_vector(&mut self, id: DocId, has: bool) {
        if let Some(d) = self.docs.get_mut(&id) {
            d.has_vector = has;
        }
    }

    /// Memories (of any tenant) whose `expires_at` is at or before `expired_before`,
    /// or past their kind's retention at `now`.
    pub fn expired(&self, now: i64, expired_before: i64) -> Vec<DocId> {
        let mut out: Vec<DocId> = self
            .expiring
            .iter()
            .filter(|id| self.docs.get(id).is_some_and(|d| d.expires_at.is_some_and(|t| t <= expired_before)))
            .collect();
        for rule in self.retention_rules(None, now) {
            if let Some(ids) = self.postings.get(&(Field::Kind, rule.kind)) {
                out.extend(ids.iter().filter(|id| self.docs.get(id).is_some_and(|d| rule.expired(d))));
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The retention policies in force (configured ones first).
    pub fn retention(&self) -> &[RetentionPolicy] {
        &self.retention
    }

    /// The policies that can apply in `tenant` (`None`: in any tenant), compiled
    /// against the interner at `now`. A policy naming a value no memory has is dropped.
    fn retention_rules(&self, tenant: Option<&str>, now: i64) -> Vec<RetentionRule> {
        let id = |v: &Option<String>| match v {
            Some(s) => self.interner.get(s).map(Some),
            None => Some(None),
        };
        self.retention
            .iter()
            .filter(|p| tenant.is_none_or(|t| p.tenant.as_deref().is_none_or(|pt| pt == t)))
            .filter_map(|p| {
                Some(RetentionRule {
                    tenant: id(&p.tenant)?,
                    kind: self.interner.get(&p.kind)?,
                    system: id(&p.system_id)?,
                    cutoff: p.cutoff(now),
                })
            })
            .collect()
    }

    /// Replace the retention policies that plans apply.
    pub fn set_retention(&mut self, policies: Vec<RetentionPolicy>) {
        self.retention = policies;
    }

    /// Compile a scope, a filter and a clock into a [`Plan`]: the one definition of
    /// "visible and matching" that list, count and every retriever use.
    /// `now = i64::MIN` sees expired memories too (erasure must reach them).
    pub fn plan(&self, scope: &Scope, filter: &MemoryFilter, now: i64) -> Plan<'_> {
        let tenant = scope.tenant.as_str();
        let mut ids = Vec::new();
        let mut unknown = false;
        let mut want = |field: Field, value: Option<&str>| {
            if let Some(v) = value {
                match self.interner.get(v) {
                    Some(i) => ids.push((field, i)),
                    None => unknown = true,
                }
            }
        };
        want(Field::Tenant, Some(tenant));
        want(Field::System, filter.system_id.as_deref());
        want(Field::Kind, filter.kind.as_deref());
        want(Field::User, filter.user_id.as_deref());
        // A scope's user is one more equality: a filter naming another user matches nothing.
        want(Field::User, scope.user_id.as_deref());
        want(Field::Agent, filter.agent_id.as_deref());
        want(Field::Session, filter.session_id.as_deref());
        want(Field::Project, filter.project.as_deref());
        for t in &filter.tags_all {
            want(Field::Tag, Some(t));
        }
        let empty = RoaringBitmap::new();
        let posting = |key: &(Field, u32)| self.postings.get(key).unwrap_or(&empty);
        ids.sort_by_key(|k| posting(k).len());
        let narrowest = ids.first().map(|(f, v)| (filter_term(*f, self.interner.name(*v)), posting(&(*f, *v)).len()));
        let mut allowed = if unknown {
            RoaringBitmap::new()
        } else {
            // Intersect smallest first.
            let mut it = ids.iter();
            let mut acc = it.next().map(|k| posting(k).clone()).unwrap_or_default();
            for k in it {
                acc &= posting(k);
            }
            acc
        };
        let any_of = |field: Field, values: &[String]| {
            let mut any = RoaringBitmap::new();
            for v in values {
                if let Some(i) = self.interner.get(v) {
                    any |= posting(&(field, i));
                }
            }
            any
        };
        if !filter.tags.is_empty() {
            allowed &= any_of(Field::Tag, &filter.tags);
        }
        if let Some(systems) = &scope.systems {
            allowed &= any_of(Field::System, systems);
        }
        if let Some(kinds) = &scope.kinds {
            allowed &= any_of(Field::Kind, kinds);
        }
        let retention = self.retention_rules(Some(tenant), now);
        let mut metadata = Vec::new();
        if let Some(want) = &filter.metadata {
            for (k, v) in want {
                match (self.interner.get(k), self.interner.get(&v.to_string())) {
                    (Some(k), Some(v)) => metadata.push((k, v)),
                    _ => allowed.clear(),
                }
            }
        }
        Plan { table: self, allowed, since: filter.since, until: filter.until, now, metadata, retention, narrowest }
    }
}

/// A retention policy compiled against the interner.
struct RetentionRule {
    tenant: Option<u32>,
    kind: u32,
    system: Option<u32>,
    /// Memories created before this are past their TTL.
    cutoff: i64,
}

impl RetentionRule {
    fn expired(&self, d: &DocMeta) -> bool {
        d.created_at < self.cutoff
            && d.fields[2] == self.kind
            && self.system.is_none_or(|s| d.fields[1] == s)
            && self.tenant.is_none_or(|t| d.fields[0] == t)
    }
}

/// A compiled filter: a bitmap of candidates and the per-memory checks left.
pub struct Plan<'a> {
    table: &'a FilterTable,
    allowed: RoaringBitmap,
    since: Option<i64>,
    until: Option<i64>,
    now: i64,
    metadata: Vec<(u32, u32)>,
    retention: Vec<RetentionRule>,
    /// The equality constraint with the fewest memories, as a filter term, and its count.
    narrowest: Option<(String, u64)>,
}

impl Plan<'_> {
    /// Keep only memories in `tiers` (of hot and warm; cold is searched elsewhere).
    pub fn restrict_tiers(&mut self, tiers: &[Tier]) {
        match (tiers.contains(&Tier::Hot), tiers.contains(&Tier::Warm)) {
            (true, true) => {}
            (true, false) => self.allowed -= &self.table.warm,
            (false, true) => self.allowed &= &self.table.warm,
            (false, false) => self.allowed.clear(),
        }
    }

    fn has_residual(&self) -> bool {
        self.since.is_some() || self.until.is_some() || !self.metadata.is_empty() || !self.retention.is_empty()
    }

    /// Whether memory `id` is visible and matches.
    pub fn matches(&self, id: DocId) -> bool {
        self.allowed.contains(id) && self.passes_checks(id)
    }

    /// The per-memory checks (time range, metadata, expiry) for an id already in
    /// the bitmap; per-memory data is read only when a check needs it.
    fn passes_checks(&self, id: DocId) -> bool {
        (!self.has_residual() && !self.table.expiring.contains(id))
            || self.table.docs.get(&id).is_some_and(|d| self.residual_ok(d))
    }

    fn residual_ok(&self, d: &DocMeta) -> bool {
        d.expires_at.is_none_or(|t| t > self.now)
            && self.since.is_none_or(|s| d.created_at >= s)
            && self.until.is_none_or(|u| d.created_at < u)
            && self.metadata.iter().all(|kv| d.metadata.contains(kv))
            && !self.retention.iter().any(|r| r.expired(d))
    }

    /// The filter term of the plan's most selective equality constraint and how many
    /// memories have it.
    pub fn narrowest(&self) -> Option<(&str, u64)> {
        self.narrowest.as_ref().map(|(t, n)| (t.as_str(), *n))
    }

    /// An upper bound on the matching memories (exact when only equality filters are set).
    pub fn estimate(&self) -> u64 {
        self.allowed.len()
    }

    /// Matching memory ids, ascending.
    pub fn ids(&self) -> impl Iterator<Item = DocId> + '_ {
        self.allowed.iter().filter(|id| self.passes_checks(*id))
    }

    /// Matching memories with their data, ascending.
    pub fn iter(&self) -> impl Iterator<Item = (DocId, &DocMeta)> + '_ {
        self.ids().filter_map(|id| self.table.docs.get(&id).map(|d| (id, d)))
    }

    pub fn count(&self) -> usize {
        if !self.has_residual() && self.allowed.is_disjoint(&self.table.expiring) {
            return self.allowed.len() as usize;
        }
        self.iter().count()
    }

    /// Matching memories newest first (`created_at`, then id), strictly after `cursor`.
    pub fn list(&self, after: Option<(i64, i64)>, n: usize) -> Vec<(i64, i64)> {
        let mut keys: Vec<(i64, i64)> =
            self.iter().map(|(id, d)| (d.created_at, i64::from(id))).filter(|k| after.is_none_or(|c| *k < c)).collect();
        let n = n.min(keys.len());
        if n < keys.len() {
            keys.select_nth_unstable_by(n, |a, b| b.cmp(a));
            keys.truncate(n);
        }
        keys.sort_unstable_by(|a, b| b.cmp(a));
        keys
    }

    /// Counts of matching memories: `(total, with a vector, by kind, by system)`.
    pub fn counts(&self) -> (usize, usize, BTreeMap<String, usize>, BTreeMap<String, usize>) {
        let (mut total, mut with_vector) = (0, 0);
        let (mut kinds, mut systems) = (HashMap::<u32, usize>::new(), HashMap::<u32, usize>::new());
        for (_, d) in self.iter() {
            total += 1;
            with_vector += usize::from(d.has_vector);
            *kinds.entry(d.fields[2]).or_default() += 1;
            *systems.entry(d.fields[1]).or_default() += 1;
        }
        let names =
            |m: HashMap<u32, usize>| m.into_iter().map(|(k, n)| (self.table.interner.name(k).to_string(), n)).collect();
        (total, with_vector, names(kinds), names(systems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta<'a>(
        tenant: &'a str,
        system: &'a str,
        tags: &'a [String],
        md: &'a serde_json::Map<String, Value>,
    ) -> MetaSource<'a> {
        MetaSource {
            tenant,
            system_id: system,
            kind: "note",
            user_id: Some("u1"),
            agent_id: None,
            session_id: None,
            project: None,
            tags,
            created_at: 100,
            expires_at: None,
            metadata: md,
            content_hash: "00ff",
            has_vector: false,
            tier: Tier::Hot,
        }
    }

    #[test]
    fn a_plan_applies_every_filter_and_tenant_and_expiry() {
        let tags = vec!["a".to_string(), "b".to_string()];
        let md = json!({"speaker": "Ann", "n": 1, "nested": {"x": 1}}).as_object().unwrap().clone();
        let mut t = FilterTable::default();
        t.upsert(7, &meta("t1", "slack", &tags, &md));
        t.upsert(8, &meta("t2", "slack", &tags, &md));
        let all = MemoryFilter::default();
        let m = |t: &FilterTable, tenant: &str, f: &MemoryFilter, now: i64| t.plan(&tenant.into(), f, now).matches(7);
        assert!(m(&t, "t1", &all, 0));
        assert!(!m(&t, "t2", &all, 0), "another tenant's plan never matches");
        assert!(!m(&t, "t3", &all, 0), "an unknown tenant matches nothing");
        let f = |f: MemoryFilter| m(&t, "t1", &f, 0);
        assert!(f(MemoryFilter { system_id: Some("slack".into()), ..Default::default() }));
        assert!(!f(MemoryFilter { system_id: Some("github".into()), ..Default::default() }));
        assert!(f(MemoryFilter { user_id: Some("u1".into()), ..Default::default() }));
        assert!(!f(MemoryFilter { user_id: Some("u2".into()), ..Default::default() }));
        assert!(!f(MemoryFilter { session_id: Some("s".into()), ..Default::default() }));
        assert!(f(MemoryFilter { tags: vec!["zz".into(), "b".into()], ..Default::default() }));
        assert!(!f(MemoryFilter { tags: vec!["zz".into()], ..Default::default() }));
        assert!(f(MemoryFilter { tags_all: vec!["a".into(), "b".into()], ..Default::default() }));
        assert!(!f(MemoryFilter { tags_all: vec!["a".into(), "zz".into()], ..Default::default() }));
        assert!(f(MemoryFilter { since: Some(100), until: Some(101), ..Default::default() }));
        assert!(!f(MemoryFilter { until: Some(100), ..Default::default() }));
        assert!(!f(MemoryFilter { since: Some(101), ..Default::default() }));
        let by_meta = |v: Value| MemoryFilter {
            metadata: Some(json!({"speaker": v}).as_object().unwrap().clone()),
            ..Default::default()
        };
        assert!(f(by_meta(json!("Ann"))));
        assert!(!f(by_meta(json!("Bob"))));
        assert!(
            !f(MemoryFilter { metadata: Some(json!({"n": "1"}).as_object().unwrap().clone()), ..Default::default() }),
            "types count"
        );
        assert_eq!(t.plan(&"t1".into(), &all, 0).count(), 1);

        let mut expiring = meta("t1", "slack", &tags, &md);
        expiring.expires_at = Some(50);
        t.upsert(7, &expiring);
        assert!(m(&t, "t1", &all, 49));
        assert!(!m(&t, "t1", &all, 50), "expired at its expires_at");
        assert_eq!(t.plan(&"t1".into(), &all, 50).count(), 0);
        t.remove(7);
        assert!(!m(&t, "t1", &all, 0));
        assert!(t.plan(&"t2".into(), &all, 0).matches(8));
    }

    #[test]
    fn a_scope_narrows_by_user_system_and_kind() {
        let md = serde_json::Map::new();
        let mut t = FilterTable::default();
        t.upsert(1, &meta("t", "slack", &[], &md));
        let mut other = meta("t", "github", &[], &md);
        other.user_id = Some("u2");
        other.kind = "insight";
        t.upsert(2, &other);
        let ids = |scope: Scope, f: MemoryFilter| t.plan(&scope, &f, 0).ids().collect::<Vec<_>>();
        let all = MemoryFilter::default;
        assert_eq!(ids(Scope::tenant("t"), all()), vec![1, 2]);
        let user = |u: &str| Scope { user_id: Some(u.into()), ..Scope::tenant("t") };
        assert_eq!(ids(user("u1"), all()), vec![1]);
        assert_eq!(ids(user("u2"), all()), vec![2]);
        assert_eq!(
            ids(user("u1"), MemoryFilter { user_id: Some("u2".into()), ..all() }),
            Vec::<u32>::new(),
            "a filter cannot widen the scope's user"
        );
        assert_eq!(ids(Scope { systems: Some(vec!["github".into()]), ..Scope::tenant("t") }, all()), vec![2]);
        assert_eq!(ids(Scope { systems: Some(vec![]), ..Scope::tenant("t") }, all()), Vec::<u32>::new());
        assert_eq!(ids(Scope { kinds: Some(vec!["note".into(), "x".into()]), ..Scope::tenant("t") }, all()), vec![1]);
    }

    #[test]
    fn retention_hides_memories_past_their_kinds_ttl() {
        let md = serde_json::Map::new();
        let mut t = FilterTable::default();
        t.upsert(1, &meta("t", "slack", &[], &md)); // note, created_at 100
        let mut insight = meta("t", "slack", &[], &md);
        insight.kind = "insight";
        t.upsert(2, &insight);
        let ids =
            |t: &FilterTable, now: i64| t.plan(&"t".into(), &MemoryFilter::default(), now).ids().collect::<Vec<_>>();
        let second = 1_000_000;
        t.set_retention(vec![RetentionPolicy { kind: "note".into(), ttl_seconds: 10, tenant: None, system_id: None }]);
        assert_eq!(ids(&t, 100 + 10 * second), vec![1, 2], "kept for exactly its ttl");
        assert_eq!(ids(&t, 101 + 10 * second), vec![2], "gone once older than the ttl; other kinds stay");
        assert_eq!(ids(&t, i64::MIN), vec![1, 2], "erasure's plan sees everything");
        t.set_retention(vec![RetentionPolicy {
            kind: "note".into(),
            ttl_seconds: 10,
            tenant: Some("other".into()),
            system_id: None,
        }]);
        assert_eq!(ids(&t, 101 + 10 * second), vec![1, 2], "another tenant's policy does not apply");
        t.set_retention(vec![RetentionPolicy {
            kind: "note".into(),
            ttl_seconds: 10,
            tenant: None,
            system_id: Some("github".into()),
        }]);
        assert_eq!(ids(&t, 101 + 10 * second), vec![1, 2], "another system's policy does not apply");
    }

    #[test]
    fn list_pages_newest_first() {
        let md = serde_json::Map::new();
        let mut t = FilterTable::default();
        for id in 1..=5u32 {
            let mut m = meta("t", "s", &[], &md);
            m.created_at = i64::from(id) * 10;
            t.upsert(id, &m);
        }
        let plan = t.plan(&"t".into(), &MemoryFilter::default(), 0);
        let page = plan.list(None, 2);
        assert_eq!(page, vec![(50, 5), (40, 4)]);
        assert_eq!(plan.list(Some(page[1]), 10), vec![(30, 3), (20, 2), (10, 1)]);
    }

    /// The filter table's compiled plans and the row-by-row definition
    /// ([`memhub_types::Selection`], which the cold tier uses) select the same
    /// memories for any memories, filters, scopes, retention policies and clock.
    mod plan_agrees_with_the_row_definition {
        use super::*;
        use memhub_types::memory::IngestionMethod;
        use memhub_types::{Memory, Scope, Selection};
        use proptest::collection::vec;
        use proptest::option;
        use proptest::prelude::*;

        // Small pools, so filters often hit and sometimes name what nothing has.
        fn name(pool: &'static [&'static str]) -> impl Strategy<Value = String> {
            proptest::sample::select(pool).prop_map(str::to_owned)
        }
        const TENANTS: &[&str] = &["t1", "t2"];
        const SYSTEMS: &[&str] = &["slack", "github", "t1", ""];
        const KINDS: &[&str] = &["note", "chat", "slack"];
        const PEOPLE: &[&str] = &["ann", "bob", ""];
        const TAGS: &[&str] = &["a", "b", "c", "ann"];
        const TIMES: std::ops::Range<i64> = 0..40;

        fn value() -> impl Strategy<Value = Value> {
            prop_oneof![
                Just(Value::Null),
                Just(json!("x")),
                Just(json!("1")),
                Just(json!(1)),
                Just(json!(1.0)),
                Just(json!(true)),
                Just(json!({"o": 1})),
                Just(json!(["a"])),
            ]
        }

        fn metadata() -> impl Strategy<Value = serde_json::Map<String, Value>> {
            proptest::collection::btree_map(name(&["k1", "k2", "a"]), value(), 0..3)
                .prop_map(|m| m.into_iter().collect())
        }

        prop_compose! {
            fn memory()(
                tenant in name(TENANTS), system_id in name(SYSTEMS), kind in name(KINDS),
                user_id in option::of(name(PEOPLE)), agent_id in option::of(name(PEOPLE)),
                session_id in option::of(name(PEOPLE)), project in option::of(name(PEOPLE)),
                tags in vec(name(TAGS), 0..3), created_at in TIMES, expires_at in option::of(TIMES),
                metadata in metadata(), warm in any::<bool>(),
            ) -> Memory {
                Memory {
                    id: uuid::Uuid::nil(), tenant, system_id, memory_id: "m".into(), kind, schema_version: 1,
                    content: String::new(), attributes: json!({}), metadata, tags, user_id, agent_id, session_id,
                    project, created_at, ingested_at: 0, updated_at: 0, expires_at, embedding: None,
                    embedding_model: None, content_hash: "00".into(), version: 1,
                    ingestion_method: IngestionMethod::Rest, tier: if warm { Tier::Warm } else { Tier::Hot },
                }
            }
        }

        prop_compose! {
            fn filter()(
                system_id in option::of(name(SYSTEMS)), kind in option::of(name(KINDS)),
                user_id in option::of(name(PEOPLE)), agent_id in option::of(name(PEOPLE)),
                session_id in option::of(name(PEOPLE)), project in option::of(name(PEOPLE)),
                tags in vec(name(&["a", "b", "z"]), 0..3), tags_all in vec(name(&["a", "c", "z"]), 0..2),
                since in option::of(TIMES), until in option::of(TIMES),
                metadata in option::of(metadata()),
            ) -> MemoryFilter {
                MemoryFilter { system_id, kind, user_id, agent_id, session_id, project, tags, tags_all, since, until, metadata }
            }
        }

        prop_compose! {
            fn scope()(
                tenant in name(TENANTS), user_id in option::of(name(PEOPLE)),
                systems in option::of(vec(name(SYSTEMS), 0..3)), kinds in option::of(vec(name(KINDS), 0..3)),
            ) -> Scope {
                Scope { tenant, user_id, systems, kinds }
            }
        }

        prop_compose! {
            fn policy()(
                kind in name(KINDS), ttl_seconds in 1u64..3, tenant in option::of(name(&["t1", "t3"])),
                system_id in option::of(name(SYSTEMS)),
            ) -> RetentionPolicy {
                // The clock below runs in seconds' worth of microseconds.
                RetentionPolicy { kind, ttl_seconds, tenant, system_id }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
            #[test]
            fn for_every_input(
                memories in vec(memory(), 0..24), filter in filter(), scope in scope(),
                retention in vec(policy(), 0..2), now_seconds in 0i64..60, erasing in any::<bool>(),
            ) {
                // Times in the memories are small; scale them so TTLs of 1-2 s matter.
                let memories: Vec<Memory> = memories.into_iter().map(|mut m| {
                    m.created_at *= 1_000_000;
                    m.expires_at = m.expires_at.map(|t| t * 1_000_000);
                    m
                }).collect();
                let filter = MemoryFilter {
                    since: filter.since.map(|t| t * 1_000_000),
                    until: filter.until.map(|t| t * 1_000_000),
                    ..filter
                };
                let now = if erasing { i64::MIN } else { now_seconds * 1_000_000 };
                let mut table = FilterTable::default();
                for (i, m) in memories.iter().enumerate() {
                    table.upsert(i as DocId, &MetaSource::of(m, "model"));
                }
                table.set_retention(retention.clone());
                let selection = Selection { scope: &scope, filter: &filter, retention: &retention, now };
                let want: Vec<DocId> =
                    (0..memories.len()).filter(|&i| selection.selects(&memories[i])).map(|i| i as DocId).collect();
                let plan = table.plan(&scope, &filter, now);
                let got: Vec<DocId> = plan.ids().collect();
                prop_assert_eq!(&got, &want, "plan.ids()");
                prop_assert_eq!(plan.count(), want.len(), "plan.count()");
                for i in 0..memories.len() as DocId {
                    prop_assert_eq!(plan.matches(i), want.contains(&i), "plan.matches({})", i);
                }
            }
        }
    }
}
