//! The persisted indexes (tantivy + usearch): searches give the same answers before
//! and after the background maintainer moves writes into them, deletes and updates
//! are reflected on both sides, and reopening catches up from each index's
//! checkpoint instead of rebuilding.

use std::path::Path;

use memhub_engine::{Access, Engine, EngineConfig, OpenMode};
use memhub_types::memory::IngestionMethod;
use memhub_types::{MemoryFilter, NewMemory, SearchRequest, DEFAULT_TENANT};
use uuid::Uuid;

const DIM: usize = 8;

fn config() -> EngineConfig {
    EngineConfig { embedding_dim: DIM, ..EngineConfig::default() }
}

/// A unit vector mostly along axis `i % DIM`, a little along the next one.
fn vector(i: usize) -> Vec<f32> {
    let mut v = vec![0.0; DIM];
    v[i % DIM] = 1.0;
    v[(i + 1) % DIM] = 0.1 * (i / DIM) as f32;
    v
}

fn memory(i: usize, content: &str) -> NewMemory {
    NewMemory {
        system_id: Some(format!("sys-{}", i % 4)),
        memory_id: Some(format!("m{i}")),
        content: content.into(),
        embedding: Some(vector(i)),
        ..Default::default()
    }
}

fn store(engine: &Engine, items: Vec<NewMemory>) -> Vec<Uuid> {
    engine
        .store_batch(&DEFAULT_TENANT.into(), items, IngestionMethod::Rest)
        .unwrap()
        .into_iter()
        .map(|r| r.unwrap().memory.id)
        .collect()
}

fn text(engine: &Engine, q: &str) -> Vec<String> {
    let req = SearchRequest { query: q.into(), semantic_ratio: Some(0.0), limit: Some(50), ..Default::default() };
    engine.search(&DEFAULT_TENANT.into(), &req).unwrap().results.into_iter().map(|h| h.memory.memory_id).collect()
}

fn nearest(engine: &Engine, v: Vec<f32>, filter: MemoryFilter) -> Vec<String> {
    let req = SearchRequest { query_embedding: Some(v), limit: Some(3), filter, ..Default::default() };
    engine.search(&DEFAULT_TENANT.into(), &req).unwrap().results.into_iter().map(|h| h.memory.memory_id).collect()
}

fn corpus() -> Vec<NewMemory> {
    (0..40).map(|i| memory(i, &format!("note {i} about topic{} and the deploy_{i} pipeline", i % 5))).collect()
}

#[test]
fn answers_are_the_same_from_pending_changes_and_from_the_persisted_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config(), OpenMode::ReadWrite).unwrap();
    let ids = store(&engine, corpus());
    let before = (text(&engine, "topic3 pipeline"), nearest(&engine, vector(13), MemoryFilter::default()));
    assert_eq!(before.0.len(), 40, "every note mentions the pipeline: {before:?}");
    assert!(
        before.0[..8].iter().all(|id| id[1..].parse::<usize>().unwrap() % 5 == 3),
        "topic3 ranks first: {before:?}"
    );
    assert_eq!(before.1[0], "m13");

    engine.checkpoint().unwrap();
    let sizes = engine.indexes().sizes();
    assert_eq!((sizes.pending_text, sizes.pending_vectors, sizes.vectors), (0, 0, 40), "{sizes:?}");
    assert!(sizes.text_disk_bytes > 0 && sizes.vector_disk_bytes > 0, "{sizes:?}");
    let after = (text(&engine, "topic3 pipeline"), nearest(&engine, vector(13), MemoryFilter::default()));
    assert_eq!(before.0, after.0);
    // Persisted vectors are quantised (f16 graph, i8 scan copy): near-ties may swap.
    assert_eq!(before.1[0], after.1[0]);
    let set = |v: &[String]| v.iter().cloned().collect::<std::collections::BTreeSet<_>>();
    assert_eq!(set(&before.1), set(&after.1));
    assert_eq!(text(&engine, "deploy_7"), vec!["m7"], "identifiers are whole terms in tantivy too");

    // Changes on top of persisted entries: the stale persisted version never shows.
    engine.delete(&Access::tenant(DEFAULT_TENANT), &ids[13]).unwrap();
    store(&engine, vec![memory(3, "rewritten: nothing about that anymore")]);
    assert!(!text(&engine, "topic3").contains(&"m3".to_string()));
    assert_eq!(text(&engine, "rewritten"), vec!["m3"]);
    assert_ne!(nearest(&engine, vector(13), MemoryFilter::default())[0], "m13", "deleted");
    engine.checkpoint().unwrap();
    assert!(!text(&engine, "topic3").contains(&"m3".to_string()));
    assert_eq!(text(&engine, "rewritten"), vec!["m3"]);
    assert!(!nearest(&engine, vector(13), MemoryFilter::default()).contains(&"m13".to_string()));
    assert_eq!(engine.indexes().sizes().vectors, 39);
}

#[test]
fn an_empty_engine_finds_nothing_without_error() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config(), OpenMode::ReadWrite).unwrap();
    assert!(text(&engine, "anything").is_empty());
    assert!(nearest(&engine, vector(1), MemoryFilter::default()).is_empty());
    engine.checkpoint().unwrap();
    let req = SearchRequest { query: "anything".into(), query_embedding: Some(vector(1)), ..Default::default() };
    assert_eq!(engine.search(&DEFAULT_TENANT.into(), &req).unwrap().total_results, 0);
}

#[test]
fn filters_apply_inside_both_retrievers_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config(), OpenMode::ReadWrite).unwrap();
    store(&engine, corpus());
    engine.checkpoint().unwrap();
    // Half persisted, half pending.
    store(&engine, (40..80).map(|i| memory(i, &format!("late note {i} about topic{}", i % 5))).collect());
    let sys = |s: &str| MemoryFilter { system_id: Some(s.into()), ..Default::default() };
    for (i, found) in
        [(13, nearest(&engine, vector(13), sys("sys-2"))), (53, nearest(&engine, vector(53), sys("sys-2")))]
    {
        assert_eq!(found.len(), 3, "a filter never cuts the result short: {found:?}");
        for id in &found {
            let n: usize = id[1..].parse().unwrap();
            assert_eq!(n % 4, 2, "{id} is outside the filter (query {i})");
        }
    }
    let req = SearchRequest {
        query: "topic1".into(),
        semantic_ratio: Some(0.0),
        limit: Some(100),
        filter: sys("sys-1"),
        ..Default::default()
    };
    let found: Vec<String> =
        engine.search(&DEFAULT_TENANT.into(), &req).unwrap().results.into_iter().map(|h| h.memory.memory_id).collect();
    // topic1 = i % 5 == 1, sys-1 = i % 4 == 1: i % 20 == 1 -> 1, 21, 41, 61.
    let mut found = found;
    found.sort();
    assert_eq!(found, vec!["m1", "m21", "m41", "m61"]);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn reopening_catches_up_from_the_checkpoint_of_indexes_that_lag_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let saved = tempfile::tempdir().unwrap();
    {
        let engine = Engine::open(dir.path(), config(), OpenMode::ReadWrite).unwrap();
        let ids = store(&engine, corpus());
        engine.checkpoint().unwrap();
        // Keep the indexes as they are now: later they stand in for indexes a crash
        // left behind.
        copy_dir(&dir.path().join("index"), saved.path());
        engine.delete(&Access::tenant(DEFAULT_TENANT), &ids[13]).unwrap();
        store(&engine, vec![memory(3, "rewritten after the checkpoint"), memory(100, "brand new after it")]);
    }
    let index_dir = dir.path().join("index");
    std::fs::remove_dir_all(&index_dir).unwrap();
    copy_dir(saved.path(), &index_dir);

    let engine = Engine::open(dir.path(), config(), OpenMode::ReadWrite).unwrap();
    let sizes = engine.indexes().sizes();
    assert_eq!((sizes.caught_up_text, sizes.caught_up_vectors), (3, 3), "only the 3 changed memories: {sizes:?}");
    assert!(!text(&engine, "topic3").contains(&"m3".to_string()), "the lagging index's old text is hidden");
    assert_eq!(text(&engine, "rewritten"), vec!["m3"]);
    assert_eq!(text(&engine, "brand"), vec!["m100"]);
    assert!(!nearest(&engine, vector(13), MemoryFilter::default()).contains(&"m13".to_string()));
    engine.checkpoint().unwrap();
    assert!(!nearest(&engine, vector(13), MemoryFilter::default()).contains(&"m13".to_string()));
    assert_eq!(engine.indexes().sizes().vectors, 40);
    drop(engine);

    // A clean close leaves nothing to catch up.
    let engine = Engine::open(dir.path(), config(), OpenMode::ReadWrite).unwrap();
    let sizes = engine.indexes().sizes();
    assert_eq!((sizes.caught_up_text, sizes.caught_up_vectors), (0, 0), "{sizes:?}");
    assert_eq!(text(&engine, "rewritten"), vec!["m3"]);
}

#[test]
fn indexes_of_another_store_are_rebuilt_not_trusted() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    {
        let engine = Engine::open(a.path(), config(), OpenMode::ReadWrite).unwrap();
        store(&engine, corpus());
    }
    {
        let engine = Engine::open(b.path(), config(), OpenMode::ReadWrite).unwrap();
        store(&engine, vec![memory(0, "the only memory of store b")]);
    }
    let index_b = b.path().join("index");
    std::fs::remove_dir_all(&index_b).unwrap();
    copy_dir(&a.path().join("index"), &index_b);
    let engine = Engine::open(b.path(), config(), OpenMode::ReadWrite).unwrap();
    let sizes = engine.indexes().sizes();
    assert_eq!((sizes.caught_up_text, sizes.caught_up_vectors), (1, 1), "{sizes:?}");
    assert_eq!(text(&engine, "topic3"), Vec::<String>::new(), "store a's texts are gone");
    assert_eq!(nearest(&engine, vector(13), MemoryFilter::default()), vec!["m0"]);
    engine.checkpoint().unwrap();
    assert_eq!(text(&engine, "note"), Vec::<String>::new());
    assert_eq!(engine.indexes().sizes().vectors, 1);
}

#[test]
fn a_read_only_engine_sees_writes_its_indexes_lack() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config(), OpenMode::ReadWrite).unwrap();
    store(&engine, corpus());
    engine.checkpoint().unwrap();
    store(&engine, vec![memory(200, "written after the last checkpoint")]);
    let reader = Engine::open(dir.path(), config(), OpenMode::ReadOnly).unwrap();
    assert_eq!(text(&reader, "checkpoint"), vec!["m200"]);
    assert_eq!(text(&reader, "deploy_7"), vec!["m7"]);
    assert_eq!(reader.indexes().sizes().caught_up_text, 1);
}

#[test]
fn a_selective_filter_ranks_its_memories_as_the_unfiltered_search_does() {
    // 40 systems of 5 memories: a system filter keeps 2.5 %, so the text search is
    // driven by the filter's postings; the ranking inside the filter must not change.
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config(), OpenMode::ReadWrite).unwrap();
    let words = ["report", "deploy", "incident", "review", "budget"];
    let memories = (0..200)
        .map(|i| NewMemory {
            system_id: Some(format!("sys-{}", i % 40)),
            content: format!("the {} {} of topic{} for team{}", words[i % 5], words[(i / 5) % 5], i % 3, i % 7),
            ..memory(i, "")
        })
        .collect();
    store(&engine, memories);
    engine.checkpoint().unwrap();
    let search = |q: &str, filter: MemoryFilter| -> Vec<String> {
        let req = SearchRequest {
            query: q.into(),
            semantic_ratio: Some(0.0),
            limit: Some(200),
            filter,
            ..Default::default()
        };
        engine.search(&DEFAULT_TENANT.into(), &req).unwrap().results.into_iter().map(|h| h.memory.memory_id).collect()
    };
    let in_system = |id: &String, s: usize| id[1..].parse::<usize>().unwrap() % 40 == s;
    for q in ["report topic1", "the deploy review team3", "incident", "budget of topic2 team5"] {
        let everywhere = search(q, MemoryFilter::default());
        for s in [0, 7, 13, 39] {
            let filtered = search(q, MemoryFilter { system_id: Some(format!("sys-{s}")), ..Default::default() });
            let expected: Vec<String> = everywhere.iter().filter(|id| in_system(id, s)).cloned().collect();
            assert!(!filtered.is_empty(), "{q:?} in sys-{s}");
            assert_eq!(filtered, expected, "{q:?} in sys-{s}");
        }
    }
    // A memory that matches only a stop word of the query is no keyword hit.
    assert!(search("the zebra", MemoryFilter { system_id: Some("sys-3".into()), ..Default::default() }).is_empty());
}

#[test]
fn a_new_search_breadth_keeps_the_saved_graph_and_a_new_build_setting_rebuilds_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = Engine::open(dir.path(), config(), OpenMode::ReadWrite).unwrap();
        store(&engine, corpus());
        engine.checkpoint().unwrap();
    }
    let reopen = |hnsw: memhub_engine::index::HnswParams| {
        let engine = Engine::open(dir.path(), EngineConfig { hnsw, ..config() }, OpenMode::ReadWrite).unwrap();
        let sizes = engine.indexes().sizes();
        // A rebuild re-applies every vector from the store (pending until drained).
        assert_eq!(sizes.vectors + sizes.pending_vectors, 40, "{sizes:?}");
        assert_eq!(nearest(&engine, vector(13), MemoryFilter::default())[0], "m13");
        engine.checkpoint().unwrap();
        sizes.caught_up_vectors
    };
    let defaults = memhub_engine::index::HnswParams::default();
    let wider = memhub_engine::index::HnswParams { expansion_search: defaults.expansion_search * 2, ..defaults };
    assert_eq!(reopen(wider), 0, "only the search breadth changed: the graph is loaded, not rebuilt");
    let sparser = memhub_engine::index::HnswParams { connectivity: defaults.connectivity / 2, ..defaults };
    assert_eq!(reopen(sparser), 40, "another connectivity is another graph: rebuilt from the store");
}

#[test]
fn terms_in_most_of_a_large_corpus_count_only_beside_rarer_ones() {
    use memhub_engine::index::COMMON_MIN_DOCS;
    // 100k memories: "alpha" in the first half, "beta" in the second, both in ten
    // memories where the halves overlap; "gamma" in one memory in a thousand.
    let count = 2 * COMMON_MIN_DOCS as usize;
    let (half, overlap) = (count / 2, 5);
    let content = |i: usize| {
        let mut c = format!("n{i}");
        if i < half + overlap {
            c.push_str(" alpha");
        }
        if i >= half - overlap {
            c.push_str(" beta");
        }
        if i % 1000 == 7 {
            c.push_str(" gamma");
        }
        c
    };
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config(), OpenMode::ReadWrite).unwrap();
    for chunk in (0..count).collect::<Vec<_>>().chunks(1000) {
        let batch = chunk
            .iter()
            .map(|&i| NewMemory { memory_id: Some(format!("m{i}")), content: content(i), ..Default::default() })
            .collect();
        store(&engine, batch);
    }
    let search = |q: &str, limit: usize| -> Vec<usize> {
        let req = SearchRequest { query: q.into(), limit: Some(limit), ..Default::default() };
        let found = engine.search(&DEFAULT_TENANT.into(), &req).unwrap().results;
        found.into_iter().map(|h| h.memory.memory_id[1..].parse().unwrap()).collect()
    };
    let check = |when: &str| {
        // "alpha" is common: it ranks the memories that hold "gamma", it adds none.
        let rare = search("alpha gamma", 200);
        assert_eq!(rare.len(), count / 1000, "{when}: {rare:?}");
        assert!(rare.iter().all(|i| i % 1000 == 7), "{when}: {rare:?}");
        assert!(rare[..rare.len() / 2].iter().all(|i| *i < half + overlap), "{when}: alpha still scores");
        // Only common terms: the memories that hold all of them first; too few do, so
        // the search falls back to any of them and still fills the limit.
        let common = search("alpha beta", 20);
        assert_eq!(common.len(), 20, "{when}: {common:?}");
        let mut best: Vec<usize> = common[..2 * overlap].to_vec();
        best.sort_unstable();
        assert_eq!(best, (half - overlap..half + overlap).collect::<Vec<_>>(), "{when}");
    };
    check("pending");
    engine.checkpoint().unwrap();
    assert_eq!(engine.indexes().sizes().pending_text, 0);
    check("persisted");
}

/// Stats read the graphs' memory while the maintainer adds to them. usearch's own
/// figure walks node slots an add may be filling; asked mid-add it read a null node
/// and crashed the process (seen under `bench backends`). A crash fails this test.
#[test]
fn stats_during_vector_inserts_are_safe() {
    let dir = tempfile::tempdir().unwrap();
    let engine = std::sync::Arc::new(Engine::open(dir.path(), config(), OpenMode::ReadWrite).unwrap());
    let writer = {
        let engine = engine.clone();
        std::thread::spawn(move || {
            for batch in 0..40 {
                store(&engine, (0..500).map(|i| memory(batch * 500 + i, "vectors arriving")).collect());
            }
        })
    };
    let mut reads = 0usize;
    while !writer.is_finished() {
        let sizes = engine.indexes().sizes();
        assert!(sizes.vector_memory_bytes >= sizes.hot_graph_bytes);
        reads += 1;
    }
    writer.join().unwrap();
    assert!(reads > 0);
}
