//! Engine behaviour across its public API: tenancy on every path, reopen, import.

use memhub_engine::{Engine, EngineConfig, OpenMode};
use memhub_types::memory::IngestionMethod;
use memhub_types::{ErrorCode, MemoryFilter, MemoryPatch, NewMemory, SearchRequest, StoreOutcome};

fn config() -> EngineConfig {
    EngineConfig { embedding_dim: 3, ..EngineConfig::default() }
}

fn new(tenant: &str, memory_id: &str, content: &str) -> NewMemory {
    NewMemory {
        tenant: Some(tenant.into()),
        system_id: Some("sys".into()),
        memory_id: Some(memory_id.into()),
        content: content.into(),
        embedding: Some(vec![1.0, 0.0, 0.0]),
        ..Default::default()
    }
}

fn not_found<T: std::fmt::Debug>(r: Result<T, memhub_types::Error>) {
    assert_eq!(r.unwrap_err().code, ErrorCode::MemoryNotFound);
}

#[test]
fn tenants_never_see_or_touch_each_others_memories() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config(), OpenMode::ReadWrite).unwrap();
    let a = engine.store_memory(new("a", "m1", "secret plans of tenant a"), IngestionMethod::Rest).unwrap().memory;
    // The same key in another tenant is another memory.
    let b = engine.store_memory(new("b", "m1", "tenant b's notes"), IngestionMethod::Rest).unwrap();
    assert_eq!(b.outcome, StoreOutcome::Created);
    assert_ne!(a.id, b.memory.id);

    not_found(engine.get("b", &a.id));
    not_found(engine.history("b", &a.id));
    not_found(engine.update("b", &a.id, MemoryPatch { content: Some("overwritten".into()), ..Default::default() }));
    not_found(engine.delete("b", &a.id));
    not_found(engine.get_by_memory_id("c", None, "m1"));
    assert_eq!(engine.get("a", &a.id).unwrap().content, "secret plans of tenant a", "untouched");

    let search = |tenant: &str| {
        let req =
            SearchRequest { query: "tenant".into(), query_embedding: Some(vec![1.0, 0.0, 0.0]), ..Default::default() };
        engine.search(tenant, &req).unwrap().results.into_iter().map(|h| h.memory.tenant).collect::<Vec<_>>()
    };
    assert_eq!(search("a"), vec!["a"]);
    assert_eq!(search("b"), vec!["b"]);
    assert!(search("c").is_empty());
    let page = engine.list("b", &MemoryFilter::default(), None, None).unwrap();
    assert_eq!(page.memories.len(), 1);
    assert_eq!(engine.stats("a").unwrap().memories, 1);
    let mut exported = Vec::new();
    engine
        .export(Some("a"), |m| {
            exported.push(m.tenant);
            Ok(())
        })
        .unwrap();
    assert_eq!(exported, vec!["a"]);
}

#[test]
fn reopening_rebuilds_the_index_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = Engine::open(dir.path(), config(), OpenMode::ReadWrite).unwrap();
        let items = (0..20).map(|i| new("t", &format!("m{i}"), &format!("item number {i} about rust"))).collect();
        assert!(engine.store_batch(items, IngestionMethod::Rest).unwrap().iter().all(Result::is_ok));
        let gone = engine.get_by_memory_id("t", None, "m3").unwrap();
        engine.delete("t", &gone.id).unwrap();
        let changed = engine.get_by_memory_id("t", None, "m4").unwrap();
        engine
            .update("t", &changed.id, MemoryPatch { content: Some("now about zebras".into()), ..Default::default() })
            .unwrap();
        // No checkpoint: dropped as if the process ended.
    }
    let engine = Engine::open(dir.path(), config(), OpenMode::ReadWrite).unwrap();
    let req = |q: &str| SearchRequest { query: q.into(), limit: Some(100), ..Default::default() };
    assert_eq!(engine.search("t", &req("rust")).unwrap().total_results, 18);
    let zebra = engine.search("t", &req("zebras")).unwrap();
    assert_eq!(zebra.results[0].memory.memory_id, "m4");
    assert_eq!(zebra.results[0].memory.version, 2);
    assert_eq!(engine.stats("t").unwrap().history_versions, 1);
    // A second writer on the same data dir is refused.
    let err = Engine::open(dir.path(), config(), OpenMode::ReadWrite).err().expect("locked");
    assert_eq!(err.code, ErrorCode::DataDirLocked);
    // A reader is not.
    let reader = Engine::open(dir.path(), config(), OpenMode::ReadOnly).unwrap();
    assert_eq!(reader.stats("t").unwrap().memories, 19);
}

#[test]
fn import_validates_every_record_before_writing_any() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config(), OpenMode::ReadWrite).unwrap();
    let good = engine.store_memory(new("t", "m1", "kept"), IngestionMethod::Rest).unwrap().memory;
    let mut other = good.clone();
    other.memory_id = "m2".into();
    other.id = uuid::Uuid::now_v7();
    let mut tampered = other.clone();
    tampered.memory_id = "m3".into();
    tampered.content = "changed without rehashing".into();
    let err = engine.import(vec![other, tampered]).unwrap_err();
    assert_eq!(err.field.as_deref(), Some("records[1].content_hash"));
    assert_eq!(engine.stats("t").unwrap().memories, 1, "nothing of the refused import was written");
}
