//! The change stream: every committed change is one typed, ordered entry of the
//! store's log, and the log is what readers of the feed see, within their scope.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod support;

use memhub_engine::{Access, EmbeddingWorker, Engine, EngineConfig, EventsConfig, TierConfig};
use memhub_objects::BucketConfig;
use memhub_types::memory::IngestionMethod;
use memhub_types::time::now_micros;
use memhub_types::{
    Change, ChangeFilter, ChangeOp, EmbedError, Embedder, MemoryFilter, NewEntity, NewMemory, NewRelation,
    RetentionPolicy, Scope, SearchRequest,
};

const DAY: i64 = 86_400 * 1_000_000;

/// A deterministic 4-d "encoder": enough to make the server store vectors.
struct CountingEmbedder;

impl Embedder for CountingEmbedder {
    fn model_name(&self) -> &str {
        "counting-4d"
    }
    fn dim(&self) -> usize {
        4
    }
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        Ok(texts.iter().map(|t| vec![t.len() as f32, 1.0, 0.5, 0.25]).collect())
    }
}

fn config(dir: &Path) -> EngineConfig {
    EngineConfig {
        embedding_dim: 4,
        tiers: TierConfig {
            cold: Some(BucketConfig { url: format!("file://{}", dir.join("bucket").display()), ..Default::default() }),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn memory(id: &str, content: &str, age_days: i64, user: Option<&str>) -> NewMemory {
    NewMemory {
        system_id: Some("slack".into()),
        memory_id: Some(id.into()),
        kind: Some("note".into()),
        content: content.into(),
        created_at: Some(now_micros() - age_days * DAY),
        user_id: user.map(String::from),
        ..Default::default()
    }
}

fn ann() -> NewEntity {
    NewEntity {
        name: "Ann".into(),
        entity_type: "person".into(),
        observations: vec![],
        properties: Default::default(),
        metadata: Default::default(),
    }
}

fn all(engine: &Engine, scope: &Scope) -> Vec<Change> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = engine.changes(scope, after, &ChangeFilter::default(), Some(3)).unwrap();
        assert!(page.next_after >= after, "the cursor never goes back");
        if page.changes.is_empty() && page.next_after == after {
            return out;
        }
        after = page.next_after;
        out.extend(page.changes);
    }
}

fn ops_of(changes: &[Change], memory_id: &str) -> Vec<ChangeOp> {
    let id = changes.iter().find(|c| c.memory_id.as_deref() == Some(memory_id)).map(|c| c.id);
    changes.iter().filter(|c| Some(c.id) == id).map(|c| c.op).collect()
}

#[test]
fn every_kind_of_change_is_its_own_operation_in_commit_order() {
    let dir = tempfile::tempdir().unwrap();
    let engine =
        Arc::new(support::open(&dir.path().join("data"), config(dir.path()), Some(Arc::new(CountingEmbedder))));
    let scope = Scope::tenant("default");
    let access = Access::tenant("default");
    // A memory old enough for cold: created, updated, then aged (moved to warm, frozen).
    engine.store_memory(&scope, memory("old", "the first draft", 200, None), IngestionMethod::Rest).unwrap();
    engine.store_memory(&scope, memory("old", "the second draft", 200, None), IngestionMethod::Rest).unwrap();
    let worker = EmbeddingWorker::start(engine.clone());
    let started = Instant::now();
    while engine.embedding_backlog() > 0 || !all(&engine, &scope).iter().any(|c| c.op == ChangeOp::Embedded) {
        assert!(started.elapsed() < Duration::from_secs(20), "the embedding worker never ran");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(worker);
    let report = engine.age_tiers().unwrap();
    assert_eq!((report.to_warm, report.to_cold), (1, 1));
    // A write to the cold key thaws it first, then writes a new version.
    engine.store_memory(&scope, memory("old", "the third draft", 200, None), IngestionMethod::Rest).unwrap();
    engine.age_tiers().unwrap();
    // Retention removes it from its cold file.
    let policy = RetentionPolicy { tenant: None, kind: "note".into(), system_id: None, ttl_seconds: 86_400 };
    engine.set_retention("default", vec![policy]).unwrap();
    engine.purge_expired().unwrap();
    // Fresh memories: one deleted, one erased.
    let gone = engine.store_memory(&scope, memory("gone", "to be deleted", 0, None), IngestionMethod::Rest).unwrap();
    engine.delete(&access, &gone.memory.id).unwrap();
    engine.store_memory(&scope, memory("secret-key", "erase me", 0, None), IngestionMethod::Rest).unwrap();
    engine.erase(&scope, &MemoryFilter { system_id: Some("slack".into()), ..Default::default() }).unwrap();
    engine.store_entity("default", ann()).unwrap();
    let relation = NewRelation {
        from_entity: "Ann".into(),
        to_entity: "memhub".into(),
        relation_type: "works_on".into(),
        properties: Default::default(),
        metadata: Default::default(),
    };
    engine.store_relation("default", relation).unwrap();

    let changes = all(&engine, &scope);
    assert!(changes.windows(2).all(|w| w[0].seq < w[1].seq), "sequence numbers increase in commit order");
    use ChangeOp::*;
    let old = ops_of(&changes, "old");
    assert_eq!(old[..7], [Created, Updated, Embedded, Moved, Frozen, Thawed, Updated], "{old:?}");
    assert_eq!(old[old.len() - 2..], [Frozen, Purged], "{old:?}");
    assert_eq!(ops_of(&changes, "gone"), [Created, Deleted]);
    // An erasure keeps ids only: the memory's events lose its client key, earlier ones too.
    let erased: Vec<&Change> = changes.iter().filter(|c| c.op == Erased).collect();
    assert_eq!(erased.len(), 1);
    let erased_id = erased[0].id;
    assert!(changes.iter().filter(|c| c.id == erased_id).all(|c| c.memory_id.is_none()), "{changes:?}");
    assert!(!changes.iter().any(|c| c.memory_id.as_deref() == Some("secret-key")));
    assert_eq!(changes.iter().filter(|c| c.id == erased_id).map(|c| c.op).collect::<Vec<_>>(), [Created, Erased]);
    let graph: Vec<ChangeOp> = changes.iter().filter(|c| c.op.is_graph()).map(|c| c.op).collect();
    assert_eq!(graph, [EntityUpserted, RelationUpserted]);
    // Every change carries its place: tenant, system, kind, version.
    for c in changes.iter().filter(|c| !c.op.is_graph()) {
        assert_eq!(
            (c.tenant.as_str(), c.system_id.as_deref(), c.kind.as_deref()),
            ("default", Some("slack"), Some("note"))
        );
        assert!(c.version.is_some_and(|v| v >= 1));
    }
}

#[test]
fn a_reader_sees_the_changes_of_what_it_may_read() {
    let dir = tempfile::tempdir().unwrap();
    let engine = support::open(&dir.path().join("data"), config(dir.path()), None);
    let tenant = Scope::tenant("default");
    for (id, user) in [("a1", "ann"), ("b1", "bob"), ("a2", "ann")] {
        engine.store_memory(&tenant, memory(id, &format!("note {id}"), 0, Some(user)), IngestionMethod::Rest).unwrap();
    }
    engine
        .store_memory(&Scope::tenant("other"), memory("x", "another tenant", 0, None), IngestionMethod::Rest)
        .unwrap();
    engine.store_entity("default", ann()).unwrap();
    let ann = Scope { user_id: Some("ann".into()), ..Scope::tenant("default") };
    let seen: Vec<String> = all(&engine, &ann).into_iter().map(|c| c.memory_id.unwrap_or_default()).collect();
    // Not bob's, not another tenant's, and not the graph (it has no owner).
    assert_eq!(seen, ["a1", "a2"]);
    let whole: Vec<ChangeOp> = all(&engine, &tenant).into_iter().map(|c| c.op).collect();
    assert_eq!(whole, [ChangeOp::Created, ChangeOp::Created, ChangeOp::Created, ChangeOp::EntityUpserted]);
    // Filters narrow further; a filter never widens a scope.
    let bob = ChangeFilter { user_id: Some("bob".into()), ..Default::default() };
    assert!(engine.changes(&ann, 0, &bob, None).unwrap().changes.is_empty());
    assert_eq!(engine.changes(&tenant, 0, &bob, None).unwrap().changes.len(), 1);
    let only = ChangeFilter { ops: Some(vec![ChangeOp::EntityUpserted]), ..Default::default() };
    assert_eq!(engine.changes(&tenant, 0, &only, None).unwrap().changes.len(), 1);
    // Invisible changes are skipped once: the cursor moves past them.
    let page = engine.changes(&ann, 0, &ChangeFilter::default(), None).unwrap();
    assert_eq!(page.next_after, engine.last_change().unwrap());
    assert!(engine.changes(&ann, 0, &ChangeFilter::default(), Some(0)).is_err(), "limit 0 is refused");
}

#[test]
fn a_reader_behind_the_pruned_log_is_told_to_reset() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = EngineConfig { events: EventsConfig { retention_seconds: 0 }, ..config(dir.path()) };
    let tenant = Scope::tenant("default");
    let last = {
        let engine = support::open(&data, config.clone(), None);
        for i in 0..5 {
            engine
                .store_memory(
                    &tenant,
                    memory(&format!("m{i}"), &format!("kept memory {i}"), 0, None),
                    IngestionMethod::Rest,
                )
                .unwrap();
        }
        let before = engine.last_change().unwrap();
        assert!(!engine.changes(&tenant, 0, &ChangeFilter::default(), None).unwrap().reset);
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(engine.prune_changes(now_micros()).unwrap(), 5);
        let page = engine.changes(&tenant, 0, &ChangeFilter::default(), None).unwrap();
        assert!(page.reset, "a reader from 0 missed pruned changes");
        assert!(page.changes.is_empty());
        assert_eq!(page.next_after, before);
        // Up to date: no reset, and the next change follows.
        assert!(!engine.changes(&tenant, before, &ChangeFilter::default(), None).unwrap().reset);
        engine.store_memory(&tenant, memory("m5", "after the prune", 0, None), IngestionMethod::Rest).unwrap();
        let next = engine.changes(&tenant, before, &ChangeFilter::default(), None).unwrap();
        assert_eq!(next.changes.len(), 1);
        assert_eq!(next.changes[0].seq, before + 1, "sequence numbers continue after a prune");
        engine.last_change().unwrap()
    };
    // Reopened, the indexes are intact and the numbers go on.
    let engine = support::open(&data, config, None);
    assert_eq!(engine.last_change().unwrap(), last);
    let found = engine.search(&tenant, &SearchRequest { query: "memory".into(), ..Default::default() }).unwrap();
    assert_eq!(found.results.len(), 5);
}

/// Every page a reader can get, as the feed sends it (JSON), following `all`'s cursor.
fn pages(engine: &Engine, scope: &Scope, filter: &ChangeFilter, limit: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = engine.changes(scope, after, filter, Some(limit)).unwrap();
        out.push(
            serde_json::to_string(&page.changes).unwrap()
                + &format!(" next_after={} reset={}", page.next_after, page.reset),
        );
        if page.changes.is_empty() && page.next_after == after {
            return out;
        }
        after = page.next_after;
    }
}

/// [`pages`] from the engine's shared wire forms ([`Engine::recent_rendered`]).
fn rendered_pages(engine: &Engine, scope: &Scope, filter: &ChangeFilter, limit: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let (changes, next_after) = engine.recent_rendered(scope, after, filter, limit).expect("all held");
        let json: Vec<&str> = changes.iter().map(|c| &*c.json).collect();
        out.push(format!("[{}] next_after={next_after} reset=false", json.join(",")));
        if changes.is_empty() && next_after == after {
            return out;
        }
        after = next_after;
    }
}

#[test]
fn readers_that_keep_up_read_memory_and_get_what_the_store_would_give() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let tenant = Scope::tenant("default");
    let ann_only = Scope { user_id: Some("ann".into()), ..Scope::tenant("default") };
    let readers = [
        (tenant.clone(), ChangeFilter::default(), 7),
        (ann_only.clone(), ChangeFilter::default(), 3),
        (
            tenant.clone(),
            ChangeFilter { ops: Some(vec![ChangeOp::Updated, ChangeOp::Erased]), ..Default::default() },
            2,
        ),
        (tenant.clone(), ChangeFilter { user_id: Some("bob".into()), ..Default::default() }, 1000),
    ];
    let from_memory: Vec<Vec<String>> = {
        // Opened on an empty store, the engine holds every change it publishes.
        let engine = support::open(&data, config(dir.path()), None);
        for i in 0..40 {
            let user = ["ann", "bob", "eve"][i % 3];
            let content = format!("note {i} of {user}");
            engine
                .store_memory(&tenant, memory(&format!("k{i}"), &content, 0, Some(user)), IngestionMethod::Rest)
                .unwrap();
        }
        engine
            .store_memory(&tenant, memory("k1", "bob changed his mind", 0, Some("bob")), IngestionMethod::Rest)
            .unwrap();
        engine
            .store_memory(&tenant, memory("zebra-secret-key", "eve's secret", 0, Some("eve")), IngestionMethod::Rest)
            .unwrap();
        engine.store_entity("default", ann()).unwrap();
        // Rendered before the erasure: the shared wire forms must forget the erased key too.
        let before: Vec<Vec<String>> = readers.iter().map(|(s, f, n)| rendered_pages(&engine, s, f, *n)).collect();
        assert!(before[0].concat().contains("zebra-secret-key"));
        let eve = MemoryFilter { user_id: Some("eve".into()), ..Default::default() };
        engine.erase(&tenant, &eve).unwrap();
        let pages: Vec<Vec<String>> = readers.iter().map(|(s, f, n)| pages(&engine, s, f, *n)).collect();
        let rendered: Vec<Vec<String>> = readers.iter().map(|(s, f, n)| rendered_pages(&engine, s, f, *n)).collect();
        assert_eq!(rendered, pages, "the shared wire form of each change is its JSON");
        let everything = pages[0].concat();
        assert!(!everything.contains("zebra"), "an erased memory's key stays in the in-memory log");
        assert!(everything.contains("\"erased\"") && everything.contains("k1"), "{everything}");
        pages
    };
    // Reopened, nothing is held: the same reads come from the store.
    let engine = support::open(&data, config(dir.path()), None);
    let from_store: Vec<Vec<String>> = readers.iter().map(|(s, f, n)| pages(&engine, s, f, *n)).collect();
    assert_eq!(from_memory, from_store);
}

/// A batch is written as its items one by one would be (the store may look up and
/// insert them all at once): each item's outcome at its position, a key twice in
/// one batch gets two versions, a cold key is thawed first, another user's key is
/// refused alone, and every new memory is found under its own id.
#[test]
fn a_batch_writes_each_item_as_one_by_one_would() {
    use memhub_types::StoreOutcome as O;
    let dir = tempfile::tempdir().unwrap();
    let engine = support::open(&dir.path().join("data"), config(dir.path()), None);
    let tenant = Scope::tenant("default");
    let put = |id: &str, content: &str, age: i64, user: Option<&str>| {
        engine.store_memory(&tenant, memory(id, content, age, user), IngestionMethod::Rest).unwrap()
    };
    let kept = put("kept", "stays as it is", 0, None);
    put("edited", "the first word", 0, None);
    put("theirs", "bob's own note", 0, Some("bob"));
    let frozen = put("frozen", "an old archived note", 200, None);
    assert_eq!(engine.age_tiers().unwrap().to_cold, 1);

    let items = vec![
        memory("n1", "quartz appears here", 0, None),
        NewMemory { created_at: Some(kept.memory.created_at), ..memory("kept", "stays as it is", 0, None) },
        memory("edited", "the second word", 0, None),
        memory("n2", "basalt appears here", 0, None),
        memory("frozen", "an old note thawed and rewritten", 200, None),
    ];
    let results = engine.store_batch(&tenant, items, IngestionMethod::Rest).unwrap();
    let outcomes: Vec<_> = results.iter().map(|r| r.as_ref().unwrap().outcome).collect();
    assert_eq!(outcomes, [O::Created, O::Unchanged, O::Updated, O::Created, O::Updated]);
    let stored: Vec<_> = results.into_iter().map(Result::unwrap).collect();
    assert_eq!(stored[1].memory.id, kept.memory.id);
    assert_eq!((stored[2].memory.version, stored[4].memory.version), (2, 2));
    assert_eq!(stored[4].memory.id, frozen.memory.id, "a cold key keeps its memory");
    for (word, at) in [("quartz", 0), ("basalt", 3)] {
        let found = engine.search(&tenant, &SearchRequest { query: word.into(), ..Default::default() }).unwrap();
        let ids: Vec<_> = found.results.iter().map(|h| h.memory.id).collect();
        assert_eq!(ids, [stored[at].memory.id], "{word} finds its own memory");
        assert_eq!(engine.get(&tenant, &ids[0]).unwrap().content, format!("{word} appears here"));
    }

    // The same key twice: the second item is a new version of the first.
    let twice = vec![memory("twice", "one", 0, None), memory("twice", "two", 0, None)];
    let results = engine.store_batch(&tenant, twice, IngestionMethod::Rest).unwrap();
    let written: Vec<_> = results.into_iter().map(Result::unwrap).collect();
    assert_eq!((written[0].outcome, written[1].outcome), (O::Created, O::Updated));
    assert_eq!((written[1].memory.id, written[1].memory.version), (written[0].memory.id, 2));

    // A user's batch: its new memory is written, the other user's key refused alone.
    let ann = Scope { user_id: Some("ann".into()), ..Scope::tenant("default") };
    let mixed = vec![memory("ann-1", "ann writes", 0, None), memory("theirs", "ann overwrites", 0, None)];
    let results = engine.store_batch(&ann, mixed, IngestionMethod::Rest).unwrap();
    assert_eq!(results[0].as_ref().unwrap().outcome, O::Created);
    assert!(results[1].is_err(), "{:?}", results[1]);

    let changes = all(&engine, &tenant);
    assert!(changes.windows(2).all(|w| w[0].seq < w[1].seq), "sequence numbers increase");
    use ChangeOp::*;
    assert_eq!(ops_of(&changes, "edited"), [Created, Updated]);
    assert_eq!(ops_of(&changes, "kept"), [Created]);
    assert_eq!(ops_of(&changes, "twice"), [Created, Updated]);
    assert_eq!(ops_of(&changes, "n1"), [Created]);
    assert_eq!(ops_of(&changes, "theirs"), [Created]);
    assert_eq!(&ops_of(&changes, "frozen")[..], [Created, Moved, Frozen, Thawed, Updated]);
}
