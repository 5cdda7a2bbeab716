//! The DuckDB reader against real files written by DuckDB 1.5 (Python `duckdb`,
//! installed by scripts/test.sh) with `scripts/duckdb-fixture.py`.
#![cfg(feature = "duckdb")]

use std::path::{Path, PathBuf};
use std::process::Command;

use memhub_ingest::duckdb::{read_knowledge_graph, read_reflection};
use memhub_ingest::{Row, Source};
use serde_json::json;

/// The checkout under test, read at run time (the target dir is shared between
/// checkouts, so the compile-time path can name another one).
fn repo() -> PathBuf {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    PathBuf::from(dir).join("../..")
}

/// Run the fixture script with the test venv's Python (and `pythonpath`, if any).
fn fixture(pythonpath: Option<&Path>, args: &[&str]) {
    let python = repo().join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: run scripts/test.sh, which installs duckdb 1.5", python.display());
    let mut cmd = Command::new(python);
    cmd.arg(repo().join("scripts/duckdb-fixture.py")).args(args);
    if let Some(p) = pythonpath {
        cmd.env("PYTHONPATH", p);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "fixture {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn read_all(path: &Path, batch: usize) -> (Vec<Row>, usize) {
    let mut rows = Vec::new();
    let mut calls = 0;
    let n = read_reflection(path, "mac.local", 384, batch, |b| {
        assert!(b.len() <= batch);
        calls += 1;
        rows.extend(b);
        Ok(())
    })
    .unwrap();
    assert_eq!(n as usize, rows.len());
    (rows, calls)
}

fn vector(i: usize) -> Vec<f32> {
    (0..384).map(|j| (i as f64 * 0.37 + j as f64).sin() as f32).collect()
}

#[test]
fn v2_tables_map_to_memories_with_a_vss_index_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("reflection.duckdb");
    let kg = dir.path().join("knowledge_graph.duckdb");
    let (db_s, kg_s) = (db.to_str().unwrap(), kg.to_str().unwrap());
    fixture(None, &["--out", db_s, "--conversations", "20", "--reflections", "12", "--vss", "--kg", kg_s]);

    let (rows, _) = read_all(&db, 1000);
    assert_eq!(rows.len(), 32);
    assert_eq!(rows.iter().filter(|r| r.source == Source::Conversations).count(), 20);
    let conv = |i: usize| rows.iter().find(|r| r.row_id == format!("conv_{i:06}")).unwrap();
    let c0 = conv(0).memory.as_ref().unwrap();
    assert_eq!(c0.content, "Conversation 0 about deploying the ünïcode service 🚀 on host-0");
    assert_eq!(c0.kind.as_deref(), Some("conversation"));
    assert_eq!(c0.system_id.as_deref(), Some("mac.local"));
    assert_eq!(c0.memory_id.as_deref(), Some("conv_000000"));
    assert_eq!(c0.created_at, memhub_types::time::parse_timestamp("2026-11-01T00:00:00Z"));
    assert_eq!(
        conv(3).memory.as_ref().unwrap().created_at,
        memhub_types::time::parse_timestamp("2026-11-01T00:03:00Z")
    );
    assert_eq!((c0.user_id.as_deref(), c0.session_id.as_deref()), (Some("alice"), Some("s0")));
    assert_eq!(conv(1).memory.as_ref().unwrap().user_id.as_deref(), Some("bob"));
    assert_eq!(c0.project.as_deref(), Some("memhub"));
    assert_eq!(
        c0.attributes,
        Some(json!({"category": "dev", "subcategory": "deploy", "importance_score": 0.0, "memory_tier": "long_term",
                    "namespace": "default", "source_type": "claude-code"}))
    );
    // A NULL column is left out, not written as null.
    assert!(conv(1).memory.as_ref().unwrap().attributes.as_ref().unwrap().get("subcategory").is_none());
    assert_eq!(
        c0.metadata.clone().map(serde_json::Value::Object),
        Some(json!({"i": 0, "lang": "en", "note": "ünï", "source_table": "conversations_v2"}))
    );
    for i in [0, 1, 7] {
        let got = conv(i).memory.as_ref().unwrap().embedding.clone().expect("a vector");
        assert!(got.iter().zip(vector(i)).all(|(a, b)| (a - b).abs() < 1e-6), "row {i}'s vector");
    }
    assert_eq!(conv(4).memory.as_ref().unwrap().embedding, None, "NULL embedding");

    let refl = |i: usize| rows.iter().find(|r| r.row_id == format!("refl_{i:06}")).unwrap();
    let r0 = refl(0).memory.as_ref().unwrap();
    assert_eq!(
        (r0.kind.as_deref(), r0.content.as_str()),
        (Some("reflection"), "Reflection 0: prefer small commits; 反省 0")
    );
    assert_eq!(r0.tags, vec!["lesson", "tag0", "ünï"]);
    assert!(refl(2).memory.as_ref().unwrap().tags.is_empty(), "NULL tags");
    assert_eq!(refl(3).memory.as_ref().unwrap().embedding, None);
    let attrs = r0.attributes.as_ref().unwrap();
    assert_eq!(attrs["related_entities"], json!(["memhub"]));
    assert_eq!((attrs["insight_type"].as_str(), attrs["confidence_score"].as_f64()), (Some("pattern"), Some(0.9)));

    // Hashes follow content: equal rows hash equal, different rows differ.
    assert_ne!(conv(0).hash, conv(1).hash);
    let (again, _) = read_all(&db, 1000);
    assert_eq!(again.iter().map(|r| &r.hash).collect::<Vec<_>>(), rows.iter().map(|r| &r.hash).collect::<Vec<_>>());

    let graph = read_knowledge_graph(&kg, "mac.local").unwrap();
    let names: Vec<&str> = graph.entities.iter().map(|(_, _, e)| e.name.as_str()).collect();
    assert_eq!(names, ["memhub", "Rust", "Zürich"]);
    let memhub = &graph.entities[0].2;
    assert_eq!(memhub.observations, ["a memory hub", "written in Rust"]);
    assert_eq!(memhub.properties.get("stars"), Some(&json!(3)));
    assert_eq!(memhub.metadata.get("source_system"), Some(&json!("mac.local")));
    let edges: Vec<(&str, &str, &str)> = graph
        .relations
        .iter()
        .map(|(_, _, r)| (r.from_entity.as_str(), r.relation_type.as_str(), r.to_entity.as_str()))
        .collect();
    assert_eq!(edges, [("memhub", "written_in", "Rust"), ("memhub", "built_in", "Zürich")]);
}

#[test]
fn legacy_tables_are_read_when_v2_ones_are_absent() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("reflection.duckdb");
    fixture(None, &["--out", db.to_str().unwrap(), "--conversations", "6", "--reflections", "4", "--legacy"]);
    let (rows, _) = read_all(&db, 100);
    assert_eq!(rows.len(), 10);
    let c1 = rows.iter().find(|r| r.row_id == "conv_000001").unwrap();
    assert_eq!(c1.memory.as_ref().unwrap().kind.as_deref(), Some("conversation"));
    assert_eq!(c1.memory.as_ref().unwrap().metadata.as_ref().unwrap()["source_table"], json!("conversations"));
    // No user, session or tags columns: the metadata's are used, as the push path does.
    let c1 = c1.memory.as_ref().unwrap();
    assert_eq!((c1.user_id.as_deref(), c1.session_id.as_deref()), (Some("ann"), Some("s1")));
    assert_eq!(c1.tags, vec!["legacy", "t1"]);
    let r1 = rows.iter().find(|r| r.row_id == "refl_000001").unwrap();
    assert_eq!(r1.memory.as_ref().unwrap().tags, vec!["lesson", "tag1", "ünï"]);
    assert_eq!(r1.memory.as_ref().unwrap().kind.as_deref(), Some("reflection"));
}

#[test]
fn large_tables_are_read_in_pages_and_handed_over_in_batches() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("reflection.duckdb");
    fixture(None, &["--out", db.to_str().unwrap(), "--conversations", "5000", "--reflections", "3"]);
    let (rows, calls) = read_all(&db, 700);
    assert_eq!(rows.len(), 5003);
    assert_eq!(calls, 5000usize.div_ceil(700) + 1, "batches never mix tables");
    let ids: std::collections::HashSet<&str> = rows.iter().map(|r| r.row_id.as_str()).collect();
    assert_eq!(ids.len(), 5003, "every row once");

    // The consumer's error stops the read.
    let mut seen = 0;
    let err = read_reflection(&db, "x", 384, 100, |b| {
        seen += b.len();
        Err("disk full".into())
    })
    .unwrap_err();
    assert_eq!((err.as_str(), seen), ("disk full", 100));
}

#[test]
fn unreadable_files_get_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("reflection.duckdb");
    std::fs::write(&junk, b"this is not a database at all, just some text to fill a header.....").unwrap();
    let err = read_reflection(&junk, "x", 384, 10, |_| Ok(())).unwrap_err();
    assert!(err.starts_with("reflection.duckdb: "), "{err}");

    // A table without content.
    let odd = dir.path().join("odd.duckdb");
    let python = repo().join(".venv/bin/python");
    let sql = format!(
        "import duckdb; c = duckdb.connect({:?}); c.execute('CREATE TABLE conversations_v2 (id VARCHAR, text VARCHAR)')",
        odd.to_str().unwrap()
    );
    assert!(Command::new(&python).args(["-c", &sql]).status().unwrap().success());
    let err = read_reflection(&odd, "x", 384, 10, |_| Ok(())).unwrap_err();
    assert!(err.contains("conversations_v2 has no content column"), "{err}");

    // An uploader's view that reads a file of the hub's machine is never run.
    let secret = dir.path().join("hub-secret.txt");
    std::fs::write(&secret, "hub-private-token").unwrap();
    let evil = dir.path().join("evil.duckdb");
    let sql = format!(
        "import duckdb; c = duckdb.connect({:?}); c.execute(\"CREATE VIEW conversations_v2 AS \
         SELECT 'c1' AS id, content FROM read_text('{}')\"); \
         c.execute(\"CREATE VIEW reflections AS SELECT 'r1' AS id, content FROM read_text('{}')\")",
        evil.to_str().unwrap(),
        secret.to_str().unwrap(),
        secret.to_str().unwrap()
    );
    let made = Command::new(&python).args(["-c", &sql]).output().unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let mut rows = Vec::new();
    read_reflection(&evil, "x", 384, 10, |b| {
        rows.extend(b);
        Ok(())
    })
    .unwrap();
    assert!(
        rows.is_empty(),
        "views are not read: {:?}",
        rows.iter().map(|r| &r.memory.as_ref().unwrap().content).collect::<Vec<_>>()
    );
}

/// DuckDB 1.5 cannot open files written by DuckDB 2.0 (a newer storage version):
/// the error must say so, and what to do.
#[test]
fn a_file_from_duckdb_2_is_refused_with_an_explanation() {
    let duckdb2 = repo().join(".venv/duckdb2");
    assert!(duckdb2.exists(), "{} is missing: run scripts/test.sh, which installs duckdb 2.0 there", duckdb2.display());
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("reflection.duckdb");
    fixture(Some(&duckdb2), &["--out", db.to_str().unwrap(), "--conversations", "3"]);
    let err = read_reflection(&db, "x", 384, 10, |_| Ok(())).unwrap_err();
    assert!(err.contains("newer DuckDB"), "{err}");
    assert!(err.contains("--method http"), "{err}");
}
