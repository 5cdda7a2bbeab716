//! The pull ingestion worker end to end: systems' uploads in a bucket (a local
//! directory here) are found, decompressed by magic bytes, ingested once, re-read
//! only when they change (writing only changed rows), and failures are retried and
//! visible in `GET /v1/ingest/status` without blocking other uploads.

mod common;

use common::{akosha_upload, conversation, gzip, put, Http, Server};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_ingested_once_and_only_changed_rows_are_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let (data, bucket) = (dir.path().join("data"), dir.path().join("bucket"));
    std::fs::create_dir_all(&bucket).unwrap();
    let config = data.join("memhub.toml");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        &config,
        format!("[ingest]\ninterval_seconds = 3600\n[ingest.bucket]\nurl = \"file://{}\"\n", bucket.display()),
    )
    .unwrap();
    // The worker polls once at start: let it see the empty bucket first.
    let server = Server::start_in(&data, &[("MEMHUB_CONFIG", config.to_str().unwrap())]);
    let http = Http::new(&server);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while http.get("/v1/ingest/status").await.1["last_poll_at"].is_null() {
        assert!(std::time::Instant::now() < deadline, "the worker never polled");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    let a: Vec<Value> =
        (0..3).map(|i| conversation(&format!("a{i}"), &format!("osprey deploy note {i} ünïcode"))).collect();
    akosha_upload(&bucket, "mac.local", "20261121_101500_mac.local", &a, Some("gzip"));
    let b: Vec<Value> = (0..2).map(|i| conversation(&format!("b{i}"), &format!("osprey review {i}"))).collect();
    akosha_upload(&bucket, "host-2", "u1", &b, Some("zstd"));
    // Broken: the manifest says gzip, the file is plain. Must fail alone.
    akosha_upload(&bucket, "broken", "u1", &[conversation("x", "never")], None);
    let manifest = bucket.join("systems/broken/u1/manifest.json");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    m["compressed"] = json!(true);
    m["compression_format"] = json!("gzip");
    std::fs::write(&manifest, serde_json::to_vec(&m).unwrap()).unwrap();
    // A system id with a space is refused with a clear error.
    akosha_upload(&bucket, "bad host", "u1", &[conversation("y", "never")], None);

    let (status, report) = http.post("/v1/ingest/run", &json!({})).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        (report["ingested"].as_u64(), report["failed"].as_u64(), report["rows_written"].as_u64()),
        (Some(2), Some(1), Some(5)),
        "{report}"
    );
    assert_eq!(report["refused"].as_array().unwrap().len(), 1, "{report}");
    assert!(report["refused"][0].as_str().unwrap().contains("bad host"), "{report}");

    let (_, found) =
        http.post("/v1/search", &json!({"query": "osprey deploy note 1", "limit": 1, "system_id": "mac.local"})).await;
    let hit = &found["results"][0];
    assert_eq!(hit["memory_id"], "a1", "{found}");
    assert_eq!((hit["kind"].as_str(), hit["ingestion_method"].as_str()), (Some("note"), Some("cloud_pull")));
    assert_eq!((hit["user_id"].as_str(), hit["project"].as_str()), (Some("ann"), Some("falcon")));
    assert_eq!(hit["metadata"]["source"], "claude-code");
    assert_eq!(hit["content"], "osprey deploy note 1 ünïcode");

    // Nothing changed: nothing is read again.
    let (_, again) = http.post("/v1/ingest/run", &json!({})).await;
    assert_eq!((again["ingested"].as_u64(), again["rows_written"].as_u64()), (Some(0), Some(0)), "{again}");

    // The upload is rewritten with one changed row and one new row: two writes only.
    let mut a2 = a.clone();
    a2[2] = conversation("a2", "osprey deploy note 2, corrected");
    a2.push(conversation("a3", "osprey deploy note 3"));
    akosha_upload(&bucket, "mac.local", "20261121_101500_mac.local", &a2, Some("gzip"));
    let (_, changed) = http.post("/v1/ingest/run", &json!({})).await;
    assert_eq!((changed["ingested"].as_u64(), changed["rows_written"].as_u64()), (Some(1), Some(2)), "{changed}");
    let (_, a2_now) = http.get("/v1/memories?system_id=mac.local&limit=10").await;
    let versions: Vec<(String, u64)> = a2_now["memories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["memory_id"].as_str().unwrap().to_string(), m["version"].as_u64().unwrap()))
        .collect();
    let mut versions = versions;
    versions.sort();
    assert_eq!(versions, vec![("a0".into(), 1), ("a1".into(), 1), ("a2".into(), 2), ("a3".into(), 1)]);

    // The failure is visible, with its reason and a retry time; the others are done.
    let (_, status) = http.get("/v1/ingest/status").await;
    let uploads = status["uploads"].as_array().unwrap();
    let broken = uploads.iter().find(|u| u["system_id"] == "broken").expect("listed");
    assert_eq!((broken["state"].as_str(), broken["attempts"].as_u64()), (Some("failed"), Some(1)), "{status}");
    assert!(broken["last_error"].as_str().unwrap().contains("Gzip"), "{status}");
    assert!(broken["next_attempt_at"].is_string());
    assert_eq!(status["failed"], 1);
    assert_eq!(uploads.iter().filter(|u| u["state"] == "done").count(), 2, "{status}");
    assert!(status["bucket"].as_str().unwrap().starts_with("file://"));

    // The same story in the metrics a Prometheus alert would watch.
    let metrics = reqwest::get(http.url("/metrics")).await.unwrap().text().await.unwrap();
    let sample = |series: &str| common::metric_sample(&metrics, series);
    assert_eq!(sample("memhub_ingest_polls_total{outcome=\"ok\"}"), Some(4.0), "{metrics}");
    assert_eq!(sample("memhub_ingest_uploads_total{layout=\"akosha\",outcome=\"ingested\"}"), Some(3.0), "{metrics}");
    assert_eq!(sample("memhub_ingest_uploads_total{layout=\"akosha\",outcome=\"failed\"}"), Some(1.0), "{metrics}");
    assert_eq!(sample("memhub_ingest_rows_total{outcome=\"written\"}"), Some(7.0), "{metrics}");
    assert_eq!(sample("memhub_ingest_rows_total{outcome=\"unchanged\"}"), Some(2.0), "{metrics}");
    assert_eq!(sample("memhub_ingest_refused_objects"), Some(1.0), "{metrics}");
    assert_eq!(sample("memhub_ingest_failing_uploads"), Some(1.0), "{metrics}");
    assert!(sample("memhub_ingest_last_poll_timestamp_seconds").is_some_and(|t| t > 1.7e9), "{metrics}");
    let pulled = "memhub_memories_written_total{method=\"cloud_pull\",outcome=\"created\"}";
    assert_eq!(sample(pulled), Some(6.0), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_routes_say_how_to_turn_the_worker_on() {
    let server = Server::start();
    let http = Http::new(&server);
    let (status, body) = http.get("/v1/ingest/status").await;
    assert_eq!(status, 404, "{body}");
    assert!(body.to_string().contains("MEMHUB_INGEST_BUCKET"), "{body}");
}

/// Layout 1 (the seed's `systems/{id}/reflection.duckdb`, overwritten in place) and
/// layout 2 (Session-Buddy's uploads) with real DuckDB files: a changed database is
/// read again and only its changed rows are written; a Session-Buddy upload whose
/// checksum does not match fails alone, with its reason.
#[cfg(feature = "duckdb")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duckdb_uploads_are_read_and_reread_only_for_changed_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (data, bucket, work) = (dir.path().join("data"), dir.path().join("bucket"), dir.path().join("work"));
    for d in [&data, &bucket, &work] {
        std::fs::create_dir_all(d).unwrap();
    }
    let config = data.join("memhub.toml");
    std::fs::write(
        &config,
        format!("[ingest]\ninterval_seconds = 3600\n[ingest.bucket]\nurl = \"file://{}\"\n", bucket.display()),
    )
    .unwrap();
    let db = work.join("reflection.duckdb");
    let db_s = db.to_str().unwrap();
    common::duckdb_fixture(&["--out", db_s, "--conversations", "8", "--reflections", "4"]);
    put(&bucket, "systems/host-a/reflection.duckdb", &gzip(&std::fs::read(&db).unwrap()));
    // A Session-Buddy upload whose manifest's checksum is wrong.
    let upload = "systems/host-b/uploads/20261121_101500_host-b";
    put(&bucket, &format!("{upload}/reflection.duckdb"), &gzip(&std::fs::read(&db).unwrap()));
    let manifest = json!({"upload_id": "20261121_101500_host-b", "system_id": "host-b", "timestamp": "2026-11-21T10:15:00Z",
        "files": [{"name": "reflection.duckdb", "path": format!("{upload}/reflection.duckdb"), "size_bytes": 1,
                   "compression": "gzip", "checksum": "00".repeat(32)}],
        "metadata": {"uploader": "session-buddy", "version": "0.10.4"}});
    put(&bucket, &format!("{upload}/manifest.json"), &serde_json::to_vec(&manifest).unwrap());

    let server = Server::start_in(&data, &[("MEMHUB_CONFIG", config.to_str().unwrap())]);
    let http = Http::new(&server);
    let (_, report) = http.post("/v1/ingest/run", &json!({})).await;
    let (_, status) = http.get("/v1/ingest/status").await;
    let by_system = |status: &Value, system: &str| -> Value {
        status["uploads"].as_array().unwrap().iter().find(|u| u["system_id"] == system).cloned().unwrap()
    };
    let a = by_system(&status, "host-a");
    assert_eq!(
        (a["state"].as_str(), a["layout"].as_str(), a["rows_written"].as_u64()),
        (Some("done"), Some("seed"), Some(12)),
        "{status} {report}"
    );
    let b = by_system(&status, "host-b");
    assert_eq!(b["state"], "failed", "{status}");
    assert!(b["last_error"].as_str().unwrap().contains("checksum mismatch"), "{status}");

    // The seed overwrites its file: two new rows and one edit; this time uncompressed.
    common::duckdb_fixture(&["--out", db_s, "--conversations", "2", "--first", "8"]);
    common::duckdb_fixture(&["--out", db_s, "--set-content", "conv_000003", "rewritten by the seed"]);
    put(&bucket, "systems/host-a/reflection.duckdb", &std::fs::read(&db).unwrap());
    let (_, report) = http.post("/v1/ingest/run", &json!({})).await;
    assert_eq!(report["rows_written"], 3, "only the changed rows: {report}");
    let (_, found) = http.get("/v1/memories?system_id=host-a&limit=100").await;
    let memories = found["memories"].as_array().unwrap();
    assert_eq!(memories.len(), 14, "{found}");
    let edited = memories.iter().find(|m| m["memory_id"] == "conv_000003").unwrap();
    assert_eq!((edited["content"].as_str(), edited["version"].as_u64()), (Some("rewritten by the seed"), Some(2)));
}

/// One mapping of Akosha memories serves both paths: the same memories pushed with
/// `store_memory` to one server and pulled from an Akosha upload by another are
/// stored field for field the same, Akosha's own types (`session_memory`) and types
/// memhub has no kind for included, tags and all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn akosha_memories_are_stored_the_same_pushed_or_pulled() {
    let vector = |i: usize| -> Vec<f32> { (0..384).map(|j| ((i * 7 + j) as f32 * 0.01).sin()).collect() };
    let memories: Vec<(String, String, Value)> = vec![
        ("m0", json!({"type": "session_memory", "tags": ["akosha", "quick-test"], "user_id": "ann", "session_id": "s1"})),
        ("m1", json!({"type": "retrospective", "tags": ["sprint-12"], "project": "falcon", "agent_id": "bot-7"})),
        ("m2", json!({"created_at": "2026-11-20T09:00:00Z", "project": "falcon"})),
        ("m3", json!({"type": "insight", "category": "perf", "confidence": 0.8, "recommendations": ["cache"], "extra": {"n": 1}})),
        ("m4", json!({"type": "chat", "tags": ["x"]})),
        ("m5", json!({"type": "reflection", "insight_type": "pattern", "confidence_score": 0.9, "tags": ["lesson"]})),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (id, mut metadata))| {
        metadata["source"] = json!("laptop-1");
        // An event time on each, or both servers would stamp their own "now".
        if metadata.get("created_at").is_none() {
            metadata["created_at"] = json!(format!("2026-11-1{i}T10:00:00Z"));
        }
        (id.to_string(), format!("akosha memory {i}: the osprey deploy went fine"), metadata)
    })
    .collect();

    // Pushed, as Akosha's client does.
    let pushed = Server::start();
    let push = Http::new(&pushed);
    for (i, (id, text, metadata)) in memories.iter().enumerate() {
        let call = json!({"method": "tools/call", "params": {"name": "store_memory", "arguments": {
            "memory_id": id, "text": text, "embedding": vector(i), "metadata": metadata}}});
        let (status, body) = push.post("/mcp", &call).await;
        assert_eq!((status, body["status"].as_str()), (200, Some("stored")), "{id}: {body}");
    }

    // Pulled, from Akosha's upload layout, plus one conversation whose time is not a time.
    let dir = tempfile::tempdir().unwrap();
    let (data, bucket) = (dir.path().join("data"), dir.path().join("bucket"));
    std::fs::create_dir_all(&data).unwrap();
    let config = data.join("memhub.toml");
    std::fs::write(
        &config,
        format!("[ingest]\ninterval_seconds = 3600\n[ingest.bucket]\nurl = \"file://{}\"\n", bucket.display()),
    )
    .unwrap();
    let mut conversations: Vec<Value> = memories
        .iter()
        .enumerate()
        .map(|(i, (id, text, metadata))| json!({"id": id, "content": text, "embedding": vector(i), "metadata": metadata}))
        .collect();
    conversations.push(json!({"id": "bad-time", "content": "when?", "timestamp": "next tuesday-ish", "metadata": {}}));
    akosha_upload(&bucket, "laptop-1", "up1", &conversations, Some("gzip"));
    let pulled = Server::start_in(&data, &[("MEMHUB_CONFIG", config.to_str().unwrap())]);
    let pull = Http::new(&pulled);
    // The worker polls once at start; wait for that poll to take the upload.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        let (_, status) = pull.get("/v1/ingest/status").await;
        if status["uploads"][0]["state"] == "done" {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "the upload was not ingested: {status}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let upload = &status["uploads"][0];
    assert_eq!(upload["rows_written"], memories.len(), "{status}");
    assert_eq!((upload["state"].as_str(), upload["rows_refused"].as_u64()), (Some("done"), Some(1)), "{status}");

    let stored = |http: &Http, id: String| {
        let http = http.clone();
        async move {
            let (_, list) = http.get("/v1/memories?system_id=laptop-1&limit=100").await;
            let m = list["memories"].as_array().unwrap().iter().find(|m| m["memory_id"] == id.as_str()).cloned();
            let m = m.unwrap_or_else(|| panic!("{id} not stored: {list}"));
            http.get(&format!("/v1/memories/{}?include_embedding=true", m["id"].as_str().unwrap())).await.1
        }
    };
    let fields = [
        "system_id",
        "memory_id",
        "kind",
        "schema_version",
        "content",
        "content_hash",
        "attributes",
        "metadata",
        "tags",
        "user_id",
        "agent_id",
        "session_id",
        "project",
        "created_at",
        "expires_at",
        "embedding",
        "embedding_model",
    ];
    for (id, _, _) in &memories {
        let (a, b) = (stored(&push, id.clone()).await, stored(&pull, id.clone()).await);
        for f in fields {
            assert_eq!(a[f], b[f], "{id}.{f}: pushed {} / pulled {}", a[f], b[f]);
        }
        assert_eq!(
            (a["ingestion_method"].as_str(), b["ingestion_method"].as_str()),
            (Some("http_push"), Some("cloud_pull"))
        );
    }
    // And what they were stored as.
    let m = |id: &str| stored(&pull, id.to_string());
    let m0 = m("m0").await;
    assert_eq!((m0["kind"].as_str(), m0["tags"].clone()), (Some("note"), json!(["akosha", "quick-test"])), "{m0}");
    assert_eq!((m0["user_id"].as_str(), m0["session_id"].as_str()), (Some("ann"), Some("s1")));
    let m1 = m("m1").await;
    assert_eq!((m1["kind"].as_str(), m1["metadata"]["type"].as_str()), (Some("note"), Some("retrospective")));
    assert_eq!((m1["project"].as_str(), m1["agent_id"].as_str()), (Some("falcon"), Some("bot-7")));
    let m2 = m("m2").await;
    assert_eq!(m2["kind"], "note", "no type: a note, as store_memory has always stored it");
    assert!(m2["created_at"].as_str().unwrap().starts_with("2026-11-20T09:00:00"), "{m2}");
    let m3 = m("m3").await;
    assert_eq!(m3["kind"], "insight");
    assert_eq!(m3["attributes"], json!({"category": "perf", "confidence": 0.8, "recommendations": ["cache"]}));
    assert_eq!(m("m4").await["kind"], "note", "chat needs fields Akosha cannot send");
    let m5 = m("m5").await;
    assert_eq!((m5["kind"].as_str(), m5["attributes"]["insight_type"].as_str()), (Some("reflection"), Some("pattern")));
}
