//! Group commit: concurrent store writes share transactions, and each caller gets
//! exactly the result it would have had alone: durable and searchable once
//! acknowledged, refused alone when its own write fails, never lost when another
//! write of its group fails.

use std::collections::BTreeSet;

use memhub_engine::{Engine, EngineConfig, OpenMode};
use memhub_types::memory::IngestionMethod;
use memhub_types::{ChangeFilter, ChangeOp, ErrorCode, NewMemory, Scope, SearchRequest, StoreOutcome, DEFAULT_TENANT};

fn config() -> EngineConfig {
    EngineConfig { embedding_dim: 3, ..EngineConfig::default() }
}

fn new(memory_id: &str, content: &str) -> NewMemory {
    NewMemory {
        system_id: Some("sys".into()),
        memory_id: Some(memory_id.into()),
        content: content.into(),
        embedding: Some(vec![1.0, 0.0, 0.0]),
        ..Default::default()
    }
}

fn scope() -> Scope {
    Scope::tenant(DEFAULT_TENANT)
}

/// An engine whose store refuses (at the SQL level, inside the transaction) any
/// memory whose content says "poison": a write that fails after its group started.
fn poisoned_engine(dir: &std::path::Path) -> Engine {
    drop(Engine::open(dir, config(), OpenMode::ReadWrite).unwrap());
    let conn = rusqlite::Connection::open(dir.join("memhub.db")).unwrap();
    conn.execute_batch(
        "CREATE TRIGGER poison BEFORE INSERT ON memories WHEN NEW.content LIKE '%poison%'
         BEGIN SELECT RAISE(ABORT, 'poisoned write refused by the test'); END;",
    )
    .unwrap();
    drop(conn);
    Engine::open(dir, config(), OpenMode::ReadWrite).unwrap()
}

#[test]
fn a_failing_write_fails_alone_and_every_other_write_of_its_group_lands() {
    let dir = tempfile::tempdir().unwrap();
    let engine = poisoned_engine(dir.path());
    let results = std::thread::scope(|s| {
        // A large batch holds the commit lock while the single writers queue behind it,
        // so they commit in groups.
        let engine = &engine;
        s.spawn(move || {
            let filler = (0..1000).map(|i| new(&format!("filler-{i}"), "filler text")).collect();
            for r in engine.store_batch(&scope(), filler, IngestionMethod::Rest).unwrap() {
                r.unwrap();
            }
        });
        let writers: Vec<_> = (0..32)
            .map(|w| {
                s.spawn(move || {
                    (0..10)
                        .map(|i| {
                            let key = format!("w{w}-{i}");
                            let poisoned = (w * 10 + i) % 7 == 3;
                            let word = format!("uniq{w}x{i}");
                            let content = if poisoned { format!("poison {word}") } else { format!("note {word}") };
                            let result = engine.store_memory(&scope(), new(&key, &content), IngestionMethod::Rest);
                            // Read-your-writes: an acknowledged write is searchable at once.
                            let found = result.is_ok()
                                && engine
                                    .search(&scope(), &SearchRequest { query: word.clone(), ..Default::default() })
                                    .unwrap()
                                    .results
                                    .iter()
                                    .any(|h| h.memory.memory_id == key);
                            (key, poisoned, result, found)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        writers.into_iter().flat_map(|h| h.join().unwrap()).collect::<Vec<_>>()
    });

    let mut stored = 0;
    for (key, poisoned, result, found) in &results {
        if *poisoned {
            let e = result.as_ref().unwrap_err();
            assert_eq!(e.code, ErrorCode::StorageError, "{key}: {e}");
            assert!(e.detail.contains("poisoned"), "{key}: {e}");
            let missing = engine.get_by_memory_id(&scope(), Some("sys"), key).unwrap_err();
            assert_eq!(missing.code, ErrorCode::MemoryNotFound, "{key} half-written");
        } else {
            let s = result.as_ref().unwrap_or_else(|e| panic!("{key} failed with its group: {e}"));
            assert_eq!(s.outcome, StoreOutcome::Created, "{key}");
            assert!(found, "{key} acknowledged but not searchable");
            stored += 1;
        }
    }
    assert!(stored > 250 && stored < 320, "{stored}");
    assert_eq!(engine.stats(&scope()).unwrap().memories, 1000 + stored);
    // The log holds one creation per stored memory, each under its own number.
    let mut seqs = BTreeSet::new();
    let mut after = 0;
    loop {
        let page = engine.changes(&scope(), after, &ChangeFilter::default(), Some(1000)).unwrap();
        if page.changes.is_empty() {
            break;
        }
        for c in &page.changes {
            assert_eq!(c.op, ChangeOp::Created);
            assert!(seqs.insert(c.seq));
        }
        after = page.next_after;
    }
    assert_eq!(seqs.len(), 1000 + stored);
}

#[test]
fn writers_of_one_key_in_one_group_each_make_their_own_version() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), config(), OpenMode::ReadWrite).unwrap();
    let versions: Vec<(StoreOutcome, u32)> = std::thread::scope(|s| {
        let engine = &engine;
        let writers: Vec<_> = (0..16)
            .map(|w| {
                s.spawn(move || {
                    (0..10)
                        .map(|i| {
                            let stored = engine
                                .store_memory(
                                    &scope(),
                                    new("shared", &format!("revision {w} {i}")),
                                    IngestionMethod::Rest,
                                )
                                .unwrap();
                            (stored.outcome, stored.memory.version)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        writers.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(versions.iter().filter(|(o, _)| *o == StoreOutcome::Created).count(), 1);
    let numbers: BTreeSet<u32> = versions.iter().map(|(_, v)| *v).collect();
    assert_eq!(numbers, (1..=160).collect(), "a version was lost or given twice");
    let current = engine.get_by_memory_id(&scope(), Some("sys"), "shared").unwrap();
    assert_eq!(current.version, 160);
}
