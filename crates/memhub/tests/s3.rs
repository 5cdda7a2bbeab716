//! Object storage over a real S3 API: a `moto_server` on loopback (installed into
//! `.venv` by scripts/test.sh) serves the ingest bucket and the cold tier's bucket.
//! Uploads are pulled from S3, aged into Parquet in S3, found with `include_cold`,
//! erased from S3; with the S3 server gone, cold reads fail with a 503 that names
//! the bucket and never the credentials.

mod common;

use common::{list_keys, start_moto, Http, Server};
use serde_json::{json, Value};

const SECRET: &str = "s3cr3t-never-logged";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_and_cold_tier_work_against_a_real_s3_api() {
    let moto = start_moto();
    let client = reqwest::Client::new();
    for bucket in ["memhub-uploads", "memhub-cold"] {
        let r = client.put(format!("{}/{bucket}", moto.url)).send().await.unwrap();
        assert!(r.status().is_success(), "create bucket {bucket}: {}", r.status());
    }
    // An Akosha upload of two old conversations, gzip-compressed.
    let old = (chrono::Utc::now() - chrono::Duration::days(200)).to_rfc3339();
    let conversations: Vec<Value> = (0..2)
        .map(|i| json!({"id": format!("c{i}"), "content": format!("pelican migration plan {i}"), "timestamp": old, "source": "s"}))
        .collect();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &serde_json::to_vec(&json!({ "conversations": conversations })).unwrap())
        .unwrap();
    let manifest = json!({"compressed": true, "compression_format": "gzip", "files": ["memories.json"]});
    for (key, body) in [
        ("systems/mac.local/u1/memories.json", gz.finish().unwrap()),
        ("systems/mac.local/u1/manifest.json", serde_json::to_vec(&manifest).unwrap()),
    ] {
        let r = client.put(format!("{}/memhub-uploads/{key}", moto.url)).body(body).send().await.unwrap();
        assert!(r.status().is_success(), "put {key}");
    }

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("memhub.toml");
    std::fs::write(
        &config,
        "[ingest]\ninterval_seconds = 3600\n[ingest.bucket]\nurl = \"s3://memhub-uploads\"\n\
         [engine.tiers]\ninterval_seconds = 0\n[engine.tiers.cold]\nurl = \"s3://memhub-cold/archive\"\nmax_retries = 1\nretry_timeout_seconds = 5\n",
    )
    .unwrap();
    let env = [
        ("MEMHUB_CONFIG", config.to_str().unwrap()),
        ("AWS_ACCESS_KEY_ID", "memhub-test"),
        ("AWS_SECRET_ACCESS_KEY", SECRET),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ENDPOINT", moto.url.as_str()),
    ];
    let server = Server::start_in(&dir.path().join("data"), &env);
    let http = Http::new(&server);

    let (status, report) = http.post("/v1/ingest/run", &json!({})).await;
    assert_eq!(status, 200, "{report}");
    // The worker's first poll at start may have taken it already.
    let (_, ingest) = http.get("/v1/ingest/status").await;
    assert_eq!(ingest["uploads"][0]["state"], "done", "{ingest} {report}");
    assert_eq!(ingest["uploads"][0]["rows_written"], 2, "{ingest}");

    let (_, aged) = http.post("/v1/tiers/run", &json!({})).await;
    assert_eq!((aged["to_cold"].as_u64(), aged["files_written"].as_u64()), (Some(2), Some(1)), "{aged}");
    let keys = list_keys(&client, &moto, "memhub-cold").await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(
        keys[0].starts_with("archive/tenant=default/system_id=mac.local/year=") && keys[0].ends_with(".parquet"),
        "{keys:?}"
    );

    let query = json!({"query": "pelican migration", "include_cold": true});
    let (_, found) = http.post("/v1/search", &query).await;
    assert_eq!(found["total_results"], 2, "{found}");
    assert_eq!(found["results"][0]["tier"], "cold");

    // Erasure reaches S3: the file is gone.
    let (status, receipt) = http.post("/v1/erase", &json!({"system_id": "mac.local"})).await;
    assert_eq!((status, receipt["memories"].as_u64()), (200, Some(2)), "{receipt}");
    assert!(list_keys(&client, &moto, "memhub-cold").await.is_empty());

    // Re-ingest (the rows were erased, their hashes are remembered: nothing comes back),
    // then store one cold memory directly and take S3 away.
    let (_, again) = http.post("/v1/ingest/run", &json!({})).await;
    assert_eq!(
        again["rows_written"], 0,
        "an unchanged upload is not read again, so erased rows do not come back: {again}"
    );
    let (status, _) = http
        .post(
            "/v1/memories",
            &json!({"system_id": "mac.local", "memory_id": "late", "content": "pelican late note", "created_at": old}),
        )
        .await;
    assert_eq!(status, 201);
    http.post("/v1/tiers/run", &json!({})).await;
    drop(moto);
    let (status, err) = http.post("/v1/search", &query).await;
    assert_eq!(status, 503, "{err}");
    assert_eq!(err["error"]["code"], "object_store_unavailable", "{err}");
    let text = err.to_string();
    assert!(text.contains("s3://memhub-cold/archive") && !text.contains(SECRET), "{text}");
    // Hot and warm search still works without the bucket.
    let (status, _) = http.post("/v1/search", &json!({"query": "pelican"})).await;
    assert_eq!(status, 200);
}
