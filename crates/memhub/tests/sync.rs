//! End to end, real processes: a hub, an S3 API (moto) on loopback, and
//! `memhub sync` runs for two systems whose Session-Buddy databases are written by
//! DuckDB 1.5 (`scripts/duckdb-fixture.py`). Cloud upload -> the pull worker
//! ingests -> searchable with the right system and kind -> aging moves them to
//! warm and cold -> S3 stops -> `sync --method auto` falls back to HTTP and still
//! delivers -> another sync sends nothing and nothing is ever duplicated.
#![cfg(feature = "duckdb")]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::Command;

use common::{duckdb_fixture as fixture, list_keys, memhub_bin, start_moto, Http, Server};
use serde_json::{json, Value};

const AWS: [(&str, &str); 3] =
    [("AWS_ACCESS_KEY_ID", "memhub-test"), ("AWS_SECRET_ACCESS_KEY", "sync-secret"), ("AWS_REGION", "us-east-1")];

/// Run `memhub sync` and return its JSON result and whether it exited 0.
fn sync(args: &[&str], endpoint: &str) -> (Value, bool) {
    let out = Command::new(memhub_bin())
        .arg("sync")
        .args(args)
        .envs(AWS)
        .env("AWS_ENDPOINT", endpoint)
        .env("MEMHUB_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("sync printed no JSON ({e}): {stdout} {}", String::from_utf8_lossy(&out.stderr)));
    (result, out.status.success())
}

/// Every memory of the hub, by (system_id, memory_id), asserting each appears once.
async fn export(http: &Http) -> BTreeMap<(String, String), Value> {
    let text = reqwest::get(http.url("/v1/export")).await.unwrap().text().await.unwrap();
    let mut all = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let m: Value = serde_json::from_str(line).unwrap();
        let key = (m["system_id"].as_str().unwrap().to_string(), m["memory_id"].as_str().unwrap().to_string());
        assert!(all.insert(key.clone(), m).is_none(), "{key:?} exported twice");
    }
    all
}

fn count(all: &BTreeMap<(String, String), Value>, system: &str, kind: &str) -> usize {
    all.iter().filter(|((s, _), m)| s == system && m["kind"] == kind).count()
}

fn days_ago(days: i64) -> String {
    (chrono::Utc::now() - chrono::Duration::days(days)).format("%Y-%m-%d %H:%M:%S").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_systems_sync_through_s3_then_over_http_when_s3_is_down() {
    let moto = start_moto();
    let client = reqwest::Client::new();
    for bucket in ["memhub-uploads", "memhub-cold"] {
        assert!(client.put(format!("{}/{bucket}", moto.url)).send().await.unwrap().status().is_success());
    }
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    // mac.local: a month old (warm after aging), with a knowledge graph.
    // ci-runner-2: 200 days old (cold after aging), vss index, legacy-free v2 tables.
    let (mac, kg, ci) = (d("mac/reflection.duckdb"), d("mac/knowledge_graph.duckdb"), d("ci/reflection.duckdb"));
    std::fs::create_dir_all(dir.path().join("mac")).unwrap();
    std::fs::create_dir_all(dir.path().join("ci")).unwrap();
    let (month, old) = (days_ago(30), days_ago(200));
    fixture(&["--out", &mac, "--conversations", "30", "--reflections", "10", "--kg", &kg, "--start", &month]);
    fixture(&["--out", &ci, "--conversations", "15", "--reflections", "5", "--vss", "--start", &old]);

    let config = dir.path().join("memhub.toml");
    std::fs::write(
        &config,
        "[ingest]\ninterval_seconds = 3600\n[ingest.bucket]\nurl = \"s3://memhub-uploads\"\n\
         [engine.tiers]\ninterval_seconds = 0\n[engine.tiers.cold]\nurl = \"s3://memhub-cold\"\nmax_retries = 1\nretry_timeout_seconds = 5\n",
    )
    .unwrap();
    let mut env = vec![("MEMHUB_CONFIG", config.to_str().unwrap()), ("AWS_ENDPOINT", moto.url.as_str())];
    env.extend(AWS);
    let server = Server::start_in(&dir.path().join("data"), &env);
    let http = Http::new(&server);

    // 1. Both systems upload through the bucket (auto: cloud works).
    let bucket = ["--bucket", "s3://memhub-uploads", "--hub", &server.base];
    let (r, ok) = sync(&[&["--db", &mac, "--kg", &kg, "--system-id", "mac.local"][..], &bucket].concat(), &moto.url);
    assert!(ok, "{r}");
    assert_eq!((r["method"].as_str(), r["files_uploaded"].as_u64()), (Some("cloud"), Some(3)), "{r}");
    assert!(r["bytes_transferred"].as_u64().unwrap() > 0 && r["duration_seconds"].is_number(), "{r}");
    assert_eq!(r["errors"], json!([]));
    let (r, ok) = sync(&[&["--db", &ci, "--system-id", "ci-runner-2"][..], &bucket].concat(), &moto.url);
    assert!(ok && r["method"] == "cloud", "{r}");
    let keys = list_keys(&client, &moto, "memhub-uploads").await;
    let upload = r["upload_id"].as_str().unwrap();
    assert!(upload.ends_with("_ci-runner-2") && upload.len() == "YYYYMMDD_HHMMSS_ci-runner-2".len(), "{upload}");
    for file in ["reflection.duckdb", "manifest.json"] {
        assert!(keys.contains(&format!("systems/ci-runner-2/uploads/{upload}/{file}")), "{keys:?}");
    }
    // Unchanged files are not uploaded again.
    let (r, ok) = sync(&[&["--db", &ci, "--system-id", "ci-runner-2"][..], &bucket].concat(), &moto.url);
    assert!(ok && r["files_uploaded"] == 0 && r["unchanged"] == 1, "{r}");

    // 2. The worker ingests them.
    let (status, report) = http.post("/v1/ingest/run", &json!({})).await;
    assert_eq!(status, 200, "{report}");
    let (_, ingest) = http.get("/v1/ingest/status").await;
    let uploads = ingest["uploads"].as_array().unwrap();
    assert_eq!(uploads.len(), 2, "{ingest}");
    assert!(uploads.iter().all(|u| u["state"] == "done" && u["layout"] == "session_buddy"), "{ingest}");
    let all = export(&http).await;
    assert_eq!(count(&all, "mac.local", "conversation"), 30);
    assert_eq!(count(&all, "mac.local", "reflection"), 10);
    assert_eq!((count(&all, "ci-runner-2", "conversation"), count(&all, "ci-runner-2", "reflection")), (15, 5));
    let c0 = &all[&("mac.local".to_string(), "conv_000000".to_string())];
    assert_eq!(c0["ingestion_method"], "cloud_pull");
    assert_eq!(c0["content"], "Conversation 0 about deploying the ünïcode service 🚀 on host-0");
    let (_, stats) = http.get("/v1/stats").await;
    assert_eq!((stats["entities"].as_u64(), stats["relations"].as_u64()), (Some(3), Some(2)), "{stats}");

    let search = |q: &str, system: &str, extra: Value| {
        let mut body = json!({"query": q, "system_id": system, "limit": 5});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body
    };
    let (_, found) = http.post("/v1/search", &search("prefer small commits 反省 3", "ci-runner-2", json!({}))).await;
    let top = &found["results"][0];
    assert_eq!((top["memory_id"].as_str(), top["kind"].as_str()), (Some("refl_000003"), Some("reflection")), "{found}");
    assert_eq!(top["system_id"], "ci-runner-2");

    // 3. Aging: ci-runner-2 (200 days) goes cold, mac.local (30 days) warm.
    let (status, aged) = http.post("/v1/tiers/run", &json!({})).await;
    assert_eq!(status, 200, "{aged}");
    // to_warm counts every memory that left hot, the 20 that went on to cold included.
    assert_eq!((aged["to_cold"].as_u64(), aged["to_warm"].as_u64()), (Some(20), Some(60)), "{aged}");
    let (_, hot_only) = http.post("/v1/search", &search("prefer small commits", "ci-runner-2", json!({}))).await;
    assert_eq!(hot_only["total_results"], 0, "cold memories are searched on request only: {hot_only}");
    let (_, cold) = http
        .post("/v1/search", &search("prefer small commits 反省 3", "ci-runner-2", json!({"include_cold": true})))
        .await;
    assert_eq!(cold["results"][0]["memory_id"], "refl_000003", "{cold}");
    assert_eq!(cold["results"][0]["tier"], "cold");
    let (_, warm) = http.post("/v1/search", &search("deploying host-3", "mac.local", json!({}))).await;
    assert_eq!(warm["results"][0]["tier"], "warm", "{warm}");

    // 4. mac.local changes (5 new rows, one edited), and S3 goes away: auto falls back to HTTP.
    fixture(&["--out", &mac, "--conversations", "5", "--first", "30", "--start", &month]);
    fixture(&["--out", &mac, "--set-content", "conv_000001", "edited after the upload"]);
    drop(moto);
    let dead = "http://127.0.0.1:9";
    let args =
        [&["--db", &mac, "--kg", &kg, "--system-id", "mac.local", "--bucket-retries", "0"][..], &bucket].concat();
    let (r, ok) = sync(&args, dead);
    assert!(ok, "{r}");
    assert_eq!(r["method"], "http", "{r}");
    assert!(r["errors"][0].as_str().unwrap().contains("fell back to http"), "{r}");
    assert!(!r.to_string().contains("sync-secret"), "no credentials in the result: {r}");
    // Everything goes over HTTP the first time (the cloud path tracks files, not rows).
    assert_eq!(r["memories_uploaded"], 45, "{r}");
    let all = export(&http).await;
    assert_eq!((count(&all, "mac.local", "conversation"), count(&all, "mac.local", "reflection")), (35, 10));
    assert_eq!(all[&("mac.local".to_string(), "conv_000001".to_string())]["content"], "edited after the upload");
    let new = &all[&("mac.local".to_string(), "conv_000033".to_string())];
    assert_eq!((new["kind"].as_str(), new["user_id"].as_str()), (Some("conversation"), Some("bob")), "{new}");

    // 5. Nothing changed: nothing is sent; one edit: one row is sent.
    let http_only =
        [&["--db", &mac, "--system-id", "mac.local", "--method", "http", "--hub", &server.base][..]].concat();
    let (r, ok) = sync(&http_only, dead);
    assert!(ok && r["memories_uploaded"] == 0 && r["unchanged"] == 45, "{r}");
    fixture(&["--out", &mac, "--set-content", "conv_000002", "a second edit"]);
    let (r, _) = sync(&http_only, dead);
    assert_eq!(r["memories_uploaded"], 1, "{r}");
    let all = export(&http).await;
    assert_eq!(all.keys().filter(|(s, _)| s == "mac.local").count(), 45, "no duplicates");
    let ids: HashSet<&str> = all.values().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), all.len());
    assert!(Path::new(&format!("{mac}.memhub-sync.json")).exists(), "the state file sits next to the database");
}

#[test]
fn sync_refuses_bad_arguments_with_a_clear_json_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("reflection.duckdb");
    std::fs::write(&db, b"x").unwrap();
    let db = db.to_str().unwrap();
    for (args, want) in [
        (vec!["--db", db, "--system-id", "../etc", "--hub", "http://127.0.0.1:9"], "--system-id"),
        (vec!["--db", "/nonexistent.duckdb", "--system-id", "a", "--hub", "http://x:1"], "no such file"),
        (vec!["--db", db, "--system-id", "a", "--method", "cloud"], "--method cloud needs --bucket"),
        (vec!["--db", db, "--system-id", "a"], "give --bucket"),
        (vec!["--db", db, "--system-id", "a", "--hub", "ftp://x"], "invalid hub URL"),
    ] {
        let (r, ok) = sync(&args, "http://127.0.0.1:9");
        assert!(!ok && r["success"] == false, "{args:?}: {r}");
        assert!(r["errors"][0].as_str().unwrap().contains(want), "{args:?}: {r}");
    }
}
