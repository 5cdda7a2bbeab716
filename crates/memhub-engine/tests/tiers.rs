//! Tiers: aging hot -> warm -> cold, search and gets across tiers, writes to cold
//! keys, and purge/erasure reaching the cold tier's Parquet files. Runs on both
//! backends (`MEMHUB_TEST_BACKEND=postgres`).

use std::path::{Path, PathBuf};

mod support;

use memhub_engine::{Access, Engine, EngineConfig, OpenMode, TierConfig};
use memhub_objects::BucketConfig;
use memhub_types::memory::IngestionMethod;
use memhub_types::time::now_micros;
use memhub_types::{MemoryFilter, NewMemory, RetentionPolicy, Scope, SearchRequest, StoreOutcome, Tier};

const DAY: i64 = 86_400 * 1_000_000;

fn config(bucket: &Path) -> EngineConfig {
    EngineConfig {
        embedding_dim: 4,
        tiers: TierConfig {
            cold: Some(BucketConfig { url: format!("file://{}", bucket.display()), ..Default::default() }),
            file_rows: 2,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn open(dir: &Path) -> Engine {
    support::open(&dir.join("data"), config(&dir.join("bucket")), None)
}

fn memory(system: &str, id: &str, content: &str, age_days: i64, v: [f32; 4]) -> NewMemory {
    NewMemory {
        system_id: Some(system.into()),
        memory_id: Some(id.into()),
        kind: Some("conversation".into()),
        content: content.into(),
        created_at: Some(now_micros() - age_days * DAY),
        embedding: Some(v.to_vec()),
        ..Default::default()
    }
}

fn scope() -> Scope {
    Scope::tenant("default")
}

fn search(engine: &Engine, req: SearchRequest) -> Vec<String> {
    engine.search(&scope(), &req).unwrap().results.into_iter().map(|h| h.memory.memory_id).collect()
}

fn text(query: &str) -> SearchRequest {
    SearchRequest { query: query.into(), ..Default::default() }
}

fn by_vector(engine: &Engine, v: [f32; 4], cold: bool) -> Vec<String> {
    let req =
        SearchRequest { query_embedding: Some(v.to_vec()), limit: Some(1), include_cold: cold, ..Default::default() };
    search(engine, req)
}

fn tier_of(engine: &Engine, memory_id: &str) -> Tier {
    engine.get_by_memory_id(&scope(), None, memory_id).unwrap().tier
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.path().is_dir() {
                out.extend(files_under(&e.path()));
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// Three memories, one per tier once aged: `fresh` (hot), `month` (warm), `old` (cold).
fn seeded(dir: &Path) -> Engine {
    let engine = open(dir);
    let s = scope();
    engine
        .store_memory(
            &s,
            memory("mac.local", "fresh", "falcon deploy notes", 1, [1.0, 0.0, 0.0, 0.0]),
            IngestionMethod::Rest,
        )
        .unwrap();
    engine
        .store_memory(
            &s,
            memory("mac.local", "month", "falcon launch retro", 30, [0.0, 1.0, 0.0, 0.0]),
            IngestionMethod::Rest,
        )
        .unwrap();
    engine
        .store_memory(
            &s,
            memory("mac.local", "old", "falcon kickoff résumé 🚀", 200, [0.0, 0.0, 1.0, 0.0]),
            IngestionMethod::Rest,
        )
        .unwrap();
    engine
}

#[test]
fn memories_age_into_their_tiers_and_stay_findable() {
    let dir = tempfile::tempdir().unwrap();
    let engine = seeded(dir.path());
    assert_eq!(tier_of(&engine, "old"), Tier::Hot, "writes land in hot");

    let report = engine.age_tiers().unwrap();
    assert_eq!((report.to_warm, report.to_cold, report.files_written), (2, 1, 1), "{report:?}");
    assert_eq!(tier_of(&engine, "fresh"), Tier::Hot);
    assert_eq!(tier_of(&engine, "month"), Tier::Warm);
    assert_eq!(tier_of(&engine, "old"), Tier::Cold);
    assert_eq!(engine.age_tiers().unwrap(), Default::default(), "a second run has nothing to move");

    // The cold file is Parquet in its partition.
    let files = files_under(&dir.path().join("bucket"));
    assert_eq!(files.len(), 1, "{files:?}");
    let rel = files[0].strip_prefix(dir.path().join("bucket")).unwrap().to_string_lossy().to_string();
    let year = chrono::DateTime::from_timestamp_micros(now_micros() - 200 * DAY).unwrap();
    assert!(
        rel.starts_with(&format!("tenant=default/system_id=mac.local/year={}/", chrono::Datelike::year(&year))),
        "{rel}"
    );
    assert_eq!(&std::fs::read(&files[0]).unwrap()[..4], b"PAR1");

    // Default search: hot and warm; cold only on request.
    let mut found = search(&engine, text("falcon"));
    found.sort();
    assert_eq!(found, vec!["fresh", "month"]);
    let mut found = search(&engine, SearchRequest { include_cold: true, ..text("falcon") });
    found.sort();
    assert_eq!(found, vec!["fresh", "month", "old"]);
    assert_eq!(search(&engine, SearchRequest { tiers: Some(vec![Tier::Cold]), ..text("falcon") }), vec!["old"]);
    assert_eq!(search(&engine, SearchRequest { tiers: Some(vec![Tier::Warm]), ..text("falcon") }), vec!["month"]);
    // Filters prune cold partitions and rows: a time range that excludes it, another system.
    let recent = MemoryFilter { since: Some(now_micros() - 100 * DAY), ..Default::default() };
    assert!(search(&engine, SearchRequest { include_cold: true, filter: recent, ..text("kickoff") }).is_empty());
    let other = MemoryFilter { system_id: Some("github".into()), ..Default::default() };
    assert!(search(&engine, SearchRequest { include_cold: true, filter: other, ..text("kickoff") }).is_empty());

    // Vectors: the warm one is found through its i8 graph, the cold one by scan.
    assert_eq!(by_vector(&engine, [0.0, 0.9, 0.1, 0.0], false), vec!["month"]);
    assert_eq!(by_vector(&engine, [0.0, 0.0, 1.0, 0.1], true), vec!["old"]);

    // Gets reach cold: by id, by memory_id, history; unicode content intact.
    let old = engine.get_by_memory_id(&scope(), Some("mac.local"), "old").unwrap();
    assert_eq!(old.content, "falcon kickoff résumé 🚀");
    assert_eq!(engine.get(&scope(), &old.id).unwrap(), old);
    assert_eq!(engine.history(&scope(), &old.id).unwrap().len(), 1);
    assert!(engine.get(&Scope::tenant("other"), &old.id).is_err(), "another tenant never sees it");

    let stats = engine.stats(&scope()).unwrap();
    let counts: Vec<usize> = [Tier::Hot, Tier::Warm, Tier::Cold].iter().map(|t| stats.tiers[t].memories).collect();
    assert_eq!(counts, vec![1, 1, 1]);
    assert!(stats.tiers[&Tier::Cold].bytes > 0);
    assert_eq!(stats.memories, 2, "the index counts hot and warm");
    let mut exported = Vec::new();
    engine
        .export_scope(&scope(), |m| {
            exported.push(m.memory_id);
            Ok(())
        })
        .unwrap();
    exported.sort();
    assert_eq!(exported, vec!["fresh", "month", "old"], "export includes every tier");

    // Everything survives a restart: the warm graph, the cold catalog.
    drop(engine);
    let engine = open(dir.path());
    assert_eq!(tier_of(&engine, "month"), Tier::Warm);
    assert_eq!(engine.indexes().sizes().warm_vectors, 1);
    assert_eq!(by_vector(&engine, [0.0, 1.0, 0.0, 0.0], false), vec!["month"]);
    assert_eq!(search(&engine, SearchRequest { tiers: Some(vec![Tier::Cold]), ..text("kickoff") }), vec!["old"]);
}

#[test]
fn a_write_to_a_cold_key_thaws_it_and_never_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let engine = seeded(dir.path());
    engine.age_tiers().unwrap();
    let s = scope();

    // The same content again: unchanged, and nothing new anywhere.
    let frozen = engine.get_by_memory_id(&s, None, "old").unwrap();
    let mut again = memory("mac.local", "old", "falcon kickoff résumé 🚀", 200, [0.0, 0.0, 1.0, 0.0]);
    again.created_at = Some(frozen.created_at);
    let same = engine.store_memory(&s, again, IngestionMethod::Rest).unwrap();
    assert_eq!(same.outcome, StoreOutcome::Unchanged);
    // Changed content: a new version of the same memory.
    let mut changed = memory("mac.local", "old", "falcon kickoff, revised", 200, [0.0, 0.0, 1.0, 0.0]);
    changed.created_at = Some(same.memory.created_at);
    let updated = engine.store_memory(&s, changed, IngestionMethod::Rest).unwrap();
    assert_eq!(
        (updated.outcome, updated.memory.version, updated.memory.id),
        (StoreOutcome::Updated, 2, same.memory.id)
    );
    assert_ne!(updated.memory.tier, Tier::Cold);
    let everywhere = search(&engine, SearchRequest { include_cold: true, ..text("kickoff") });
    assert_eq!(everywhere, vec!["old"], "exactly one copy across tiers");
    assert_eq!(engine.history(&s, &same.memory.id).unwrap().len(), 2);
    // The next run freezes it again; the old file's replacement holds the new version only.
    let report = engine.age_tiers().unwrap();
    assert_eq!(report.to_cold, 1, "{report:?}");
    assert_eq!(engine.get(&s, &same.memory.id).unwrap().content, "falcon kickoff, revised");
    assert_eq!(files_under(&dir.path().join("bucket")).len(), 1, "replaced files are deleted");

    // Delete by id of a cold memory removes it and its history for real.
    engine.delete(&Access::tenant("default"), &same.memory.id).unwrap();
    assert!(engine.get(&s, &same.memory.id).is_err());
    assert!(search(&engine, SearchRequest { include_cold: true, ..text("kickoff") }).is_empty());
}

#[test]
fn erasure_and_retention_reach_cold_files() {
    let dir = tempfile::tempdir().unwrap();
    let engine = seeded(dir.path());
    let s = scope();
    engine
        .store_memory(
            &s,
            memory("github", "gh-old", "orca kickoff ledger", 300, [0.0, 0.0, 0.0, 1.0]),
            IngestionMethod::Rest,
        )
        .unwrap();
    engine
        .store_memory(
            &s,
            memory("mac.local", "old2", "falcon zebra archive", 201, [0.5, 0.5, 0.0, 0.0]),
            IngestionMethod::Rest,
        )
        .unwrap();
    let mut secret = memory("mac.local", "old", "falcon kickoff résumé 🚀", 200, [0.0, 0.0, 1.0, 0.0]);
    secret.tags = vec!["secret".into()];
    engine.store_memory(&s, secret, IngestionMethod::Rest).unwrap();
    engine.age_tiers().unwrap();
    assert_eq!(engine.stats(&s).unwrap().tiers[&Tier::Cold].memories, 3);

    // Erase one system's memories: its file goes; the other system's stays.
    let removed = engine.erase(&s, &MemoryFilter { system_id: Some("github".into()), ..Default::default() }).unwrap();
    assert_eq!(removed.memories, 1);
    let bucket = dir.path().join("bucket");
    for f in files_under(&bucket) {
        let bytes = std::fs::read(&f).unwrap();
        assert!(!bytes.windows(4).any(|w| w == b"orca"), "erased text left in {f:?}");
    }
    assert!(search(&engine, SearchRequest { include_cold: true, ..text("orca") }).is_empty());

    // Erase one memory sharing a partition with another: its file is rewritten
    // without it, the other stays cold and findable.
    let removed = engine.erase(&s, &MemoryFilter { tags: vec!["secret".into()], ..Default::default() }).unwrap();
    assert_eq!(removed.memories, 1);
    assert!(engine.get_by_memory_id(&s, None, "old").is_err());
    assert_eq!(engine.get_by_memory_id(&s, None, "old2").unwrap().tier, Tier::Cold);
    for f in files_under(&bucket) {
        let bytes = std::fs::read(&f).unwrap();
        assert!(!bytes.windows(7).any(|w| w == b"kickoff"), "erased text left in {f:?}");
    }

    // A retention policy on the kind purges cold memories past it.
    engine
        .set_retention(
            "default",
            vec![RetentionPolicy {
                tenant: None,
                kind: "conversation".into(),
                system_id: None,
                ttl_seconds: 100 * 86_400,
            }],
        )
        .unwrap();
    let purged = engine.purge_expired().unwrap();
    assert!(purged.memories >= 1, "{purged:?}");
    assert!(engine.get_by_memory_id(&s, None, "old2").is_err());
    assert_eq!(engine.stats(&s).unwrap().tiers[&Tier::Cold].memories, 0);
    assert!(files_under(&bucket).is_empty(), "{:?}", files_under(&bucket));
}

#[test]
fn orphaned_objects_are_swept_and_tier_boundaries_follow_the_kind() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir.path().join("bucket"));
    cfg.tiers.kinds.insert("context".into(), memhub_engine::TierAges { hot_days: Some(0.5), warm_days: None });
    let engine = support::open(&dir.path().join("data"), cfg, None);
    let s = scope();
    let mut chat = memory("slack", "c1", "standup chat", 1, [1.0, 0.0, 0.0, 0.0]);
    chat.kind = Some("context".into());
    engine.store_memory(&s, chat, IngestionMethod::Rest).unwrap();
    engine
        .store_memory(&s, memory("slack", "n1", "standup note", 1, [1.0, 0.0, 0.0, 0.0]), IngestionMethod::Rest)
        .unwrap();
    // A crash between upload and catalog commit leaves an object nobody names.
    let orphan = dir.path().join("bucket/tenant=default/system_id=slack/year=2020/month=01/part-x.parquet");
    std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    std::fs::write(&orphan, b"PAR1 partial").unwrap();

    let report = engine.age_tiers().unwrap();
    assert_eq!(report.orphans_removed, 1);
    assert!(!orphan.exists());
    assert_eq!(report.to_warm, 1, "context is warm after half a day, conversation after 7");
    assert_eq!(tier_of(&engine, "c1"), Tier::Warm);
    assert_eq!(tier_of(&engine, "n1"), Tier::Hot);
}

#[test]
fn bad_tier_boundaries_are_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = EngineConfig::default();
    cfg.tiers.warm_days = 1.0;
    let e = Engine::open(dir.path(), cfg, OpenMode::ReadWrite).err().expect("refused");
    assert_eq!(e.field.as_deref(), Some("engine.tiers.warm_days"), "{e}");
}

#[test]
fn a_cold_search_over_more_files_than_the_cache_holds_finds_every_match_the_same_each_time() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path());
    let s = scope();
    // One file per system: 40 files, more than the decoded-file cache keeps.
    for i in 0..40 {
        let content = if i == 17 { "kickoff kickoff agenda".to_string() } else { format!("kickoff notes {i}") };
        let v = [1.0, i as f32 / 40.0, 0.0, 0.0];
        engine
            .store_memory(&s, memory(&format!("sys-{i}"), &format!("m{i}"), &content, 200, v), IngestionMethod::Rest)
            .unwrap();
    }
    let report = engine.age_tiers().unwrap();
    assert_eq!((report.to_cold, report.files_written), (40, 40), "{report:?}");
    let cold_text = SearchRequest { tiers: Some(vec![Tier::Cold]), limit: Some(100), ..text("kickoff") };
    let first = engine.search(&s, &cold_text).unwrap();
    assert_eq!(first.results.len(), 40);
    assert_eq!(first.results[0].memory.memory_id, "m17", "the highest term frequency ranks first");
    let again = engine.search(&s, &cold_text).unwrap();
    let key = |r: &memhub_types::SearchResponse| -> Vec<(String, u32)> {
        r.results.iter().map(|h| (h.memory.memory_id.clone(), h.score.to_bits())).collect()
    };
    assert_eq!(key(&first), key(&again), "a cached re-read scores exactly the same");
    // Cosine of a cold vector: m39's vector is nearest to [1, 1, 0, 0].
    assert_eq!(by_vector(&engine, [1.0, 1.0, 0.0, 0.0], true), vec!["m39"]);
    let hit = engine
        .search(
            &s,
            &SearchRequest {
                query_embedding: Some(vec![1.0, 0.0, 0.0, 0.0]),
                include_cold: true,
                limit: Some(1),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(hit.results[0].memory.memory_id, "m0");
    assert!((hit.results[0].similarity - 1.0).abs() < 1e-6, "{}", hit.results[0].similarity);
    assert_eq!(hit.results[0].memory.embedding, None, "vectors only on request");
}

#[test]
fn aging_runs_merge_the_small_files_they_leave_in_a_partition() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = dir.path().join("bucket");
    let mut cfg = config(&bucket);
    cfg.tiers.file_rows = 10;
    let engine = support::open(&dir.path().join("data"), cfg, None);
    let s = scope();
    let mut reports = Vec::new();
    for i in 0..3 {
        let m = memory("mac.local", &format!("r{i}"), &format!("retro {i}"), 200, [1.0, i as f32, 0.0, 0.0]);
        engine.store_memory(&s, m, IngestionMethod::Rest).unwrap();
        let report = engine.age_tiers().unwrap();
        assert_eq!((report.to_cold, report.files_written), (1, 1), "{report:?}");
        reports.push((report.files_merged, report.orphans_removed, files_under(&bucket).len()));
    }
    // Run 0: one file. Run 1: merges it with the new one; both old objects stay for
    // readers that listed them. Run 2: sweeps those two, merges again.
    assert_eq!(reports, vec![(0, 0, 1), (1, 0, 3), (1, 2, 3)]);
    let mut found = search(&engine, SearchRequest { include_cold: true, ..text("retro") });
    found.sort();
    assert_eq!(found, ["r0", "r1", "r2"], "no memory lost or doubled by the merges");
    let r1 = engine.get_by_memory_id(&s, Some("mac.local"), "r1").unwrap();
    assert_eq!((r1.tier, engine.get(&s, &r1.id).unwrap().content.as_str()), (Tier::Cold, "retro 1"));
    assert_eq!(engine.stats(&s).unwrap().tiers[&Tier::Cold].memories, 3);

    // Erasure removes for real at once: the replaced objects still holding r1 go too.
    let filter = MemoryFilter { system_id: Some("mac.local".into()), ..Default::default() };
    assert_eq!(engine.erase(&s, &filter).unwrap().memories, 3);
    assert!(files_under(&bucket).is_empty(), "{:?}", files_under(&bucket));
}
