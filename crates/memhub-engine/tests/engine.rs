//! Engine behaviour across its public API: tenancy on every path, reopen, import.

use memhub_engine::{Access, Engine, EngineConfig, OpenMode, Stored};
use memhub_types::memory::IngestionMethod;
use memhub_types::{
    ErrorCode, MemoryFilter, MemoryPatch, NewMemory, Result, Scope, SearchRequest, StoreOutcome, DEFAULT_TENANT,
};

/// Store as a caller who may write anywhere in the memory's tenant.
fn store(engine: &Engine, new: NewMemory) -> Result<Stored> {
    let scope = Scope::tenant(new.tenant.clone().unwrap_or_else(|| DEFAULT_TENANT.into()));
    engine.store_memory(&scope, new, IngestionMethod::Rest)
}

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
    let a = store(&engine, new("a", "m1", "secret plans of tenant a")).unwrap().memory;
    // The same key in another tenant is another memory.
    let b = store(&engine, new("b", "m1", "tenant b's notes")).unwrap();
    assert_eq!(b.outcome, StoreOutcome::Created);
    assert_ne!(a.id, b.memory.id);

    not_found(engine.get(&"b".into(), &a.id));
    not_found(engine.history(&"b".into(), &a.id));
    not_found(engine.update(
        &Access::tenant("b"),
        &a.id,
        MemoryPatch { content: Some("overwritten".into()), ..Default::default() },
    ));
    not_found(engine.delete(&Access::tenant("b"), &a.id));
    not_found(engine.get_by_memory_id(&"c".into(), None, "m1"));
    assert_eq!(engine.get(&"a".into(), &a.id).unwrap().content, "secret plans of tenant a", "untouched");

    let search = |tenant: &str| {
        let req =
            SearchRequest { query: "tenant".into(), query_embedding: Some(vec![1.0, 0.0, 0.0]), ..Default::default() };
        engine.search(&tenant.into(), &req).unwrap().results.into_iter().map(|h| h.memory.tenant).collect::<Vec<_>>()
    };
    assert_eq!(search("a"), vec!["a"]);
    assert_eq!(search("b"), vec!["b"]);
    assert!(search("c").is_empty());
    let page = engine.list(&"b".into(), &MemoryFilter::default(), None, None).unwrap();
    assert_eq!(page.memories.len(), 1);
    assert_eq!(engine.stats(&"a".into()).unwrap().memories, 1);
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
        assert!(engine.store_batch(&"t".into(), items, IngestionMethod::Rest).unwrap().iter().all(Result::is_ok));
        let gone = engine.get_by_memory_id(&"t".into(), None, "m3").unwrap();
        engine.delete(&Access::tenant("t"), &gone.id).unwrap();
        let changed = engine.get_by_memory_id(&"t".into(), None, "m4").unwrap();
        engine
            .update(
                &Access::tenant("t"),
                &changed.id,
                MemoryPatch { content: Some("now about zebras".into()), ..Default::default() },
            )
            .unwrap();
        // No checkpoint: dropped as if the process ended.
    }
    let engine = Engine::open(dir.path(), config(), OpenMode::ReadWrite).unwrap();
    let req = |q: &str| SearchRequest { query: q.into(), limit: Some(100), ..Default::default() };
    assert_eq!(engine.search(&"t".into(), &req("rust")).unwrap().total_results, 18);
    let zebra = engine.search(&"t".into(), &req("zebras")).unwrap();
    assert_eq!(zebra.results[0].memory.memory_id, "m4");
    assert_eq!(zebra.results[0].memory.version, 2);
    assert_eq!(engine.stats(&"t".into()).unwrap().history_versions, Some(1));
    // A second writer on the same data dir is refused.
    let err = Engine::open(dir.path(), config(), OpenMode::ReadWrite).err().expect("locked");
    assert_eq!(err.code, ErrorCode::DataDirLocked);
    // A reader is not.
    let reader = Engine::open(dir.path(), config(), OpenMode::ReadOnly).unwrap();
    assert_eq!(reader.stats(&"t".into()).unwrap().memories, 19);
}

#[test]
fn import_validates_every_record_before_writing_any() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config(), OpenMode::ReadWrite).unwrap();
    let good = store(&engine, new("t", "m1", "kept")).unwrap().memory;
    let mut other = good.clone();
    other.memory_id = "m2".into();
    other.id = uuid::Uuid::now_v7();
    let mut tampered = other.clone();
    tampered.memory_id = "m3".into();
    tampered.content = "changed without rehashing".into();
    let err = engine.import(vec![other, tampered]).unwrap_err();
    assert_eq!(err.field.as_deref(), Some("records[1].content_hash"));
    assert_eq!(engine.stats(&"t".into()).unwrap().memories, 1, "nothing of the refused import was written");
}

/// A deterministic stand-in for a real model: hashed bag of words in 3 dimensions.
struct ToyEmbedder;

impl memhub_types::Embedder for ToyEmbedder {
    fn model_name(&self) -> &str {
        "toy"
    }
    fn dim(&self) -> usize {
        3
    }
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, memhub_types::EmbedError> {
        Ok(texts
            .iter()
            .map(|t| {
                let mut v = [0.0f32; 3];
                for w in t.split_whitespace() {
                    v[w.len() % 3] += 1.0;
                }
                let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
                v.iter().map(|x| x / n).collect()
            })
            .collect())
    }
}

#[test]
fn memories_without_vectors_are_embedded_in_the_background_and_keep_them_on_re_push() {
    let dir = tempfile::tempdir().unwrap();
    let embedder: std::sync::Arc<dyn memhub_types::Embedder> = std::sync::Arc::new(ToyEmbedder);
    let engine = std::sync::Arc::new(
        Engine::open_with(dir.path(), config(), OpenMode::ReadWrite, Some(embedder.clone())).unwrap(),
    );
    let plain = NewMemory { embedding: None, ..new("t", "m1", "abc de f") };
    let stored = store(&engine, plain.clone()).unwrap().memory;
    assert_eq!(stored.embedding, None);
    // A client vector of another model is queued too; one of the embedder's model is not.
    let other = NewMemory { embedding_model: Some("other-model".into()), ..new("t", "m2", "xyz") };
    store(&engine, other).unwrap();
    let own = NewMemory { embedding_model: Some("toy".into()), ..new("t", "m3", "own vector") };
    store(&engine, own).unwrap();
    assert_eq!(engine.embedding_backlog(), 2);

    let worker = memhub_engine::EmbeddingWorker::start(engine.clone());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while engine.embedding_backlog() > 0 || engine.get(&"t".into(), &stored.id).unwrap().embedding.is_none() {
        assert!(std::time::Instant::now() < deadline, "the worker did not drain the queue");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    worker.stop();
    let embedded = engine.get(&"t".into(), &stored.id).unwrap();
    assert_eq!(embedded.embedding_model.as_deref(), Some("toy"));
    assert_eq!(embedded.embedding.as_ref().unwrap(), &embedder.embed(&["abc de f"]).unwrap()[0]);
    assert_eq!(embedded.version, 1, "a server-made vector is not a new version");
    assert_eq!(engine.get_by_memory_id(&"t".into(), None, "m2").unwrap().embedding_model.as_deref(), Some("toy"));

    // Re-pushing the same content without a vector keeps the server's vector: no new version.
    let again = store(&engine, plain.clone()).unwrap();
    assert_eq!(again.outcome, StoreOutcome::Unchanged);
    // New content without a vector: a new version, queued again.
    let changed = store(&engine, NewMemory { content: "brand new words".into(), ..plain }).unwrap();
    assert_eq!((changed.outcome, changed.memory.embedding.is_none()), (StoreOutcome::Updated, true));
    assert_eq!(engine.embedding_backlog(), 1);

    // A text-only search is embedded on the server: hybrid, with cosine similarities.
    let found =
        engine.search(&"t".into(), &SearchRequest { query: "own vector".into(), ..Default::default() }).unwrap();
    assert_eq!(found.mode, "hybrid");
    let hit = &found.results[0];
    assert_eq!(hit.memory.memory_id, "m3");
    assert!((hit.similarity - 1.0).abs() < 1e-5, "identical text has cosine 1: {}", hit.similarity);
}

#[test]
fn an_embedder_of_another_dimension_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = EngineConfig { embedding_dim: 384, ..EngineConfig::default() };
    let err =
        Engine::open_with(dir.path(), cfg, OpenMode::ReadWrite, Some(std::sync::Arc::new(ToyEmbedder))).err().unwrap();
    assert!(err.to_string().contains("embedding_dim = 3"), "{err}");
}

#[test]
fn recency_half_life_favours_newer_memories() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config(), OpenMode::ReadWrite).unwrap();
    let now = memhub_types::time::now_micros();
    let day = 86_400_000_000i64;
    // The newer one is written first, so without recency the older (later seq) wins the tie.
    for (id, age_days) in [("new", 1), ("old", 30)] {
        let m = NewMemory {
            created_at: Some(now - age_days * day),
            embedding: None,
            ..new("t", id, "quarterly planning notes")
        };
        store(&engine, m).unwrap();
    }
    let search = |half_life: Option<f64>| {
        let req = SearchRequest { query: "planning".into(), recency_half_life: half_life, ..Default::default() };
        engine
            .search(&"t".into(), &req)
            .unwrap()
            .results
            .into_iter()
            .map(|h| (h.memory.memory_id, h.score))
            .collect::<Vec<_>>()
    };
    let plain = search(None);
    assert_eq!(plain.len(), 1, "same content collapses: {plain:?}");
    // Distinct contents so both come back.
    store(
        &engine,
        NewMemory { created_at: Some(now - 30 * day), embedding: None, ..new("t", "old", "planning notes, quarterly") },
    )
    .unwrap();
    let plain = search(None);
    assert_eq!(plain[0].0, "old");
    let recent = search(Some(7.0 * 86_400.0));
    assert_eq!(recent[0].0, "new", "{recent:?}");
    assert!(recent[1].1 < plain[0].1 / 8.0, "30 days is over 4 half-lives: {recent:?}");

    let parsed: SearchRequest =
        serde_json::from_value(serde_json::json!({"query": "x", "recency_half_life": "7d"})).unwrap();
    assert_eq!(parsed.recency_half_life, Some(604_800.0));
    let parsed: SearchRequest =
        serde_json::from_value(serde_json::json!({"query": "x", "recency_half_life": 90})).unwrap();
    assert_eq!(parsed.recency_half_life, Some(90.0));
    for bad in [serde_json::json!("soon"), serde_json::json!(-5), serde_json::json!("3y")] {
        assert!(serde_json::from_value::<SearchRequest>(serde_json::json!({"query": "x", "recency_half_life": bad}))
            .is_err());
    }
}
