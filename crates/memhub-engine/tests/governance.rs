//! Scopes on every read and write, retention with purge, and erasure that leaves
//! nothing on disk. Runs on both backends (`MEMHUB_TEST_BACKEND=postgres`).

use std::path::Path;

mod support;

use memhub_engine::{Access, Engine, EngineConfig};
use memhub_types::memory::IngestionMethod;
use memhub_types::time::now_micros;
use memhub_types::{ErrorCode, MemoryFilter, MemoryPatch, NewMemory, RetentionPolicy, Scope, SearchRequest};

fn open(dir: &Path) -> Engine {
    support::open(dir, EngineConfig { embedding_dim: 3, ..EngineConfig::default() }, None)
}

fn memory(system: &str, kind: &str, user: Option<&str>, memory_id: &str, content: &str) -> NewMemory {
    NewMemory {
        system_id: Some(system.into()),
        kind: Some(kind.into()),
        user_id: user.map(Into::into),
        memory_id: Some(memory_id.into()),
        content: content.into(),
        embedding: Some(vec![0.0, 1.0, 0.0]),
        ..Default::default()
    }
}

fn user(tenant: &str, sub: &str) -> Scope {
    Scope { user_id: Some(sub.into()), ..Scope::tenant(tenant) }
}

fn search_ids(engine: &Engine, scope: &Scope, query: &str) -> Vec<String> {
    let req = SearchRequest { query: query.into(), ..Default::default() };
    let mut ids: Vec<String> =
        engine.search(scope, &req).unwrap().results.into_iter().map(|h| h.memory.memory_id).collect();
    ids.sort();
    ids
}

fn code<T: std::fmt::Debug>(r: memhub_types::Result<T>) -> ErrorCode {
    r.expect_err("refused").code
}

#[test]
fn scopes_bound_every_read_and_write() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    let admin = Scope::tenant("acme");
    let rest = IngestionMethod::Rest;
    engine.store_memory(&admin, memory("slack", "conversation", Some("ann"), "a1", "ann likes tea"), rest).unwrap();
    let bob =
        engine.store_memory(&admin, memory("slack", "conversation", Some("bob"), "b1", "bob likes tea"), rest).unwrap();
    engine.store_memory(&admin, memory("github", "reflection", None, "i1", "tea is popular"), rest).unwrap();

    // A user sees only their own memories, whatever the filter asks for.
    let ann = user("acme", "ann");
    assert_eq!(search_ids(&engine, &ann, "tea"), vec!["a1"]);
    let wider = MemoryFilter { user_id: Some("bob".into()), ..Default::default() };
    assert!(engine.list(&ann, &wider, None, None).unwrap().memories.is_empty());
    assert_eq!(code(engine.get(&ann, &bob.memory.id)), ErrorCode::MemoryNotFound, "no existence leak");
    assert_eq!(code(engine.history(&ann, &bob.memory.id)), ErrorCode::MemoryNotFound);
    assert_eq!(engine.stats(&ann).unwrap().memories, 1);
    assert_eq!(engine.stats(&ann).unwrap().history_versions, None, "tenant-wide counts are not shown");
    let mut exported = Vec::new();
    engine
        .export_scope(&ann, |m| {
            exported.push(m.memory_id);
            Ok(())
        })
        .unwrap();
    assert_eq!(exported, vec!["a1"]);

    // A user's writes get their user_id; another user's are refused, and so is
    // overwriting another user's memory through its key.
    let own = engine.store_memory(&ann, memory("slack", "conversation", None, "a2", "ann again"), rest).unwrap();
    assert_eq!(own.memory.user_id.as_deref(), Some("ann"));
    assert_eq!(
        code(engine.store_memory(&ann, memory("slack", "conversation", Some("bob"), "x", "as bob"), rest)),
        ErrorCode::Forbidden
    );
    assert_eq!(
        code(engine.store_memory(&ann, memory("slack", "conversation", None, "b1", "hijack"), rest)),
        ErrorCode::Forbidden
    );
    let mut other_tenant = memory("slack", "conversation", None, "t1", "elsewhere");
    other_tenant.tenant = Some("globex".into());
    assert_eq!(code(engine.store_memory(&ann, other_tenant, rest)), ErrorCode::Forbidden);
    assert_eq!(engine.get(&admin, &bob.memory.id).unwrap().content, "bob likes tea", "untouched");

    // A batch refuses the forbidden items only.
    let results = engine
        .store_batch(
            &ann,
            vec![
                memory("slack", "conversation", None, "a3", "fine"),
                memory("slack", "conversation", None, "b1", "hijack"),
            ],
            rest,
        )
        .unwrap();
    assert!(results[0].is_ok());
    assert_eq!(results[1].as_ref().unwrap_err().code, ErrorCode::Forbidden);

    // A manager reads the tenant but changes only the kinds it may write.
    let manager = Access {
        read: Scope::tenant("acme"),
        write: Scope { kinds: Some(vec!["reflection".into(), "decision".into()]), ..Scope::tenant("acme") },
    };
    assert_eq!(search_ids(&engine, &manager.read, "tea"), vec!["a1", "b1", "i1"]);
    let patch = || MemoryPatch { content: Some("changed".into()), ..Default::default() };
    assert_eq!(code(engine.update(&manager, &bob.memory.id, patch())), ErrorCode::Forbidden);
    assert_eq!(code(engine.delete(&manager, &bob.memory.id)), ErrorCode::Forbidden);
    let insight = engine.get_by_memory_id(&manager.read, None, "i1").unwrap();
    engine.update(&manager, &insight.id, patch()).unwrap();

    // Another user's delete is a 404, not a 403: they cannot see it.
    assert_eq!(
        code(engine.delete(&Access { read: ann.clone(), write: ann.clone() }, &bob.memory.id)),
        ErrorCode::MemoryNotFound
    );

    // Systems narrow the same way; another tenant sees nothing.
    let slack = Scope { systems: Some(vec!["slack".into()]), ..Scope::tenant("acme") };
    assert_eq!(search_ids(&engine, &slack, "tea"), vec!["a1", "b1"]);
    assert!(search_ids(&engine, &Scope::tenant("globex"), "tea").is_empty());
}

#[test]
fn retention_hides_at_once_and_purge_removes_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    let admin = Scope::tenant("acme");
    let rest = IngestionMethod::Rest;
    let day = 86_400 * 1_000_000;
    let mut old = memory("slack", "conversation", None, "old", "ancient gossip about llamas");
    old.created_at = Some(now_micros() - 10 * day);
    let old = engine.store_memory(&admin, old, rest).unwrap().memory;
    engine
        .update(&Access::tenant("acme"), &old.id, MemoryPatch { tags: Some(vec!["v2".into()]), ..Default::default() })
        .unwrap();
    engine
        .store_memory(&admin, memory("slack", "conversation", None, "new", "fresh gossip about llamas"), rest)
        .unwrap();
    let mut insight = memory("slack", "reflection", None, "kept", "old insight about llamas");
    insight.created_at = Some(now_micros() - 10 * day);
    engine.store_memory(&admin, insight, rest).unwrap();
    let mut short = memory("slack", "note", None, "short", "llamas note that expires");
    short.expires_at = Some(now_micros() + 300_000);
    engine.store_memory(&admin, short, rest).unwrap();
    assert_eq!(search_ids(&engine, &admin, "llamas"), vec!["kept", "new", "old", "short"]);

    let chats = RetentionPolicy { kind: "conversation".into(), ttl_seconds: 7 * 86_400, tenant: None, system_id: None };
    let set = engine.set_retention("acme", vec![chats]).unwrap();
    assert_eq!(set.len(), 1);
    assert_eq!(set[0].tenant.as_deref(), Some("acme"), "stored for the caller's tenant");
    assert_eq!(search_ids(&engine, &admin, "llamas"), vec!["kept", "new", "short"], "invisible at once");
    assert_eq!(code(engine.get(&admin, &old.id)), ErrorCode::MemoryNotFound);
    assert!(engine.retention("globex").is_empty(), "one tenant's policy is not another's");
    assert_eq!(search_ids(&engine, &Scope::tenant("globex"), "llamas"), Vec::<String>::new());

    std::thread::sleep(std::time::Duration::from_millis(400));
    assert_eq!(search_ids(&engine, &admin, "llamas"), vec!["kept", "new"], "expires_at hides");
    let purged = engine.purge_expired().unwrap();
    assert_eq!((purged.memories, purged.history_versions), (2, 1));
    assert_eq!(engine.stats(&admin).unwrap().history_versions, Some(0));
    let mut all = Vec::new();
    engine
        .export(None, |m| {
            all.push(m.memory_id);
            Ok(())
        })
        .unwrap();
    all.sort();
    assert_eq!(all, vec!["kept", "new"], "gone from the store, not just hidden");
    assert_eq!(engine.purge_expired().unwrap().memories, 0);

    // Policies survive a restart.
    drop(engine);
    let engine = open(dir.path());
    assert_eq!(engine.retention("acme").len(), 1);
    assert_eq!(engine.set_retention("acme", vec![]).unwrap(), vec![]);
}

fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    for entry in walk(dir) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        if bytes.windows(needle.len()).any(|w| w == needle) {
            hits.push(entry.display().to_string());
        }
    }
    hits
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn erasure_leaves_no_trace_in_search_history_or_files() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    let admin = Scope::tenant("acme");
    let rest = IngestionMethod::Rest;
    for i in 0..50 {
        engine
            .store_memory(
                &admin,
                memory("slack", "conversation", Some("bob"), &format!("keep{i}"), &format!("weekly standup notes {i}")),
                rest,
            )
            .unwrap();
    }
    let secret = engine
        .store_memory(
            &admin,
            // The client key says it too: the change log keeps keys, and must lose this one.
            memory("slack", "conversation", Some("eve"), "s1-quixoticzebra", "eve's passphrase is quixoticzebra"),
            rest,
        )
        .unwrap()
        .memory;
    engine
        .update(
            &Access::tenant("acme"),
            &secret.id,
            MemoryPatch { content: Some("eve's passphrase is still quixoticzebra v2".into()), ..Default::default() },
        )
        .unwrap();
    let mut other = memory("slack", "conversation", Some("eve"), "s2", "quixoticzebra in another tenant");
    other.tenant = Some("globex".into());
    engine.store_memory(&Scope::tenant("globex"), other, rest).unwrap();
    engine.checkpoint().unwrap();
    // On PostgreSQL the data dir holds only the derived indexes (which keep no text
    // verbatim); the database's own files are the database's to rewrite.
    if !support::on_postgres() {
        assert!(!files_containing(dir.path(), b"quixoticzebra").is_empty(), "the test looks in the right place");
    }

    let receipt = engine.erase(&admin, &MemoryFilter { user_id: Some("eve".into()), ..Default::default() }).unwrap();
    assert_eq!((receipt.memories, receipt.history_versions), (1, 1));
    assert!(search_ids(&engine, &admin, "quixoticzebra").is_empty());
    assert_eq!(code(engine.get(&admin, &secret.id)), ErrorCode::MemoryNotFound);
    assert_eq!(search_ids(&engine, &admin, "standup").len(), 10, "others untouched");
    assert_eq!(search_ids(&engine, &Scope::tenant("globex"), "quixoticzebra"), vec!["s2"], "other tenant untouched");

    // Erase the other tenant's copy too, then nothing on disk holds the word.
    engine.erase(&Scope::tenant("globex"), &MemoryFilter::default()).unwrap();
    let left = files_containing(dir.path(), b"quixoticzebra");
    assert!(left.is_empty(), "erased text still on disk in {left:?}");
    drop(engine);
    let engine = open(dir.path());
    assert!(search_ids(&engine, &admin, "quixoticzebra").is_empty(), "and not back after a restart");
    assert_eq!(engine.stats(&admin).unwrap().memories, 50);
}

#[test]
fn soft_delete_hides_at_once_and_purges_after_its_grace() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig { embedding_dim: 3, soft_delete_seconds: 1, ..EngineConfig::default() };
    let engine = support::open(dir.path(), config, None);
    let admin = Access::tenant("acme");
    let m = engine
        .store_memory(&admin.write, memory("slack", "note", None, "s1", "softly deleted walrus"), IngestionMethod::Rest)
        .unwrap()
        .memory;
    engine.delete(&admin, &m.id).unwrap();
    assert_eq!(code(engine.get(&admin.read, &m.id)), ErrorCode::MemoryNotFound, "hidden at once");
    assert!(search_ids(&engine, &admin.read, "walrus").is_empty());
    let mut raw = Vec::new();
    engine
        .export(None, |m| {
            raw.push((m.memory_id, m.version));
            Ok(())
        })
        .unwrap();
    assert_eq!(raw, vec![("s1".to_string(), 2)], "kept in the store, as a new version");
    assert_eq!(engine.purge_expired().unwrap().memories, 0, "within the grace period");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let purged = engine.purge_expired().unwrap();
    assert_eq!((purged.memories, purged.history_versions), (1, 1), "gone with its history after it");
}
