//! Tiers end to end: a real server ages memories hot -> warm -> cold into Parquet in
//! a bucket, they stay findable over REST with `include_cold`, and a SIGKILL in the
//! middle of an aging run neither loses nor duplicates a memory.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::{axis_vector, Http, Server};
use serde_json::{json, Value};

const SYSTEMS: usize = 4;
const PER_SYSTEM: usize = 150;

/// A server whose cold tier is `bucket` (a local directory), small cold files so an
/// aging run takes many steps, and no background aging (the test triggers it).
fn start(data_dir: &Path, bucket: &Path) -> Server {
    let config = data_dir.join("memhub.toml");
    std::fs::create_dir_all(data_dir).unwrap();
    std::fs::write(
        &config,
        format!(
            "[engine.tiers]\nfile_rows = 20\ninterval_seconds = 0\n[engine.tiers.cold]\nurl = \"file://{}\"\n",
            bucket.display()
        ),
    )
    .unwrap();
    Server::start_in(data_dir, &[("MEMHUB_CONFIG", config.to_str().unwrap())])
}

fn days_ago(days: i64) -> String {
    (chrono::Utc::now() - chrono::Duration::days(days)).to_rfc3339()
}

/// Every memory of the store (all tiers), by `system_id/memory_id`, from the export.
async fn exported(http: &Http) -> BTreeMap<String, usize> {
    let resp = reqwest::get(http.url("/v1/export")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut seen = BTreeMap::new();
    for line in resp.text().await.unwrap().lines() {
        let m: Value = serde_json::from_str(line).unwrap();
        *seen
            .entry(format!("{}/{}", m["system_id"].as_str().unwrap(), m["memory_id"].as_str().unwrap()))
            .or_insert(0) += 1;
    }
    seen
}

async fn seed(http: &Http) {
    for s in 0..SYSTEMS {
        let memories: Vec<Value> = (0..PER_SYSTEM)
            .map(|j| {
                // Spread over a year: some stay hot, some warm, most go cold.
                json!({"system_id": format!("host{s}.local"), "memory_id": format!("m{j}"), "kind": "conversation",
                       "content": format!("heron note {j} from host {s}"), "embedding": axis_vector(j),
                       "created_at": days_ago((j as i64 * 365) / PER_SYSTEM as i64)})
            })
            .collect();
        let (status, out) = http.post("/v1/memories/batch", &json!({ "memories": memories })).await;
        assert_eq!((status, out["stored"].as_u64()), (200, Some(PER_SYSTEM as u64)), "{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aging_over_http_moves_memories_to_parquet_and_they_stay_findable() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = dir.path().join("bucket");
    let server = start(&dir.path().join("data"), &bucket);
    let http = Http::new(&server);
    seed(&http).await;

    let (status, report) = http.post("/v1/tiers/run", &json!({})).await;
    assert_eq!(status, 200, "{report}");
    assert!(report["to_cold"].as_u64().unwrap() > 0 && report["to_warm"].as_u64().unwrap() > 0, "{report}");
    assert!(report["files_merged"].as_u64().unwrap() > 0, "partial month files are merged: {report}");

    let (_, stats) = http.get("/v1/stats").await;
    let count = |t: &str| stats["tiers"][t]["memories"].as_u64().unwrap();
    assert_eq!(count("hot") + count("warm") + count("cold"), (SYSTEMS * PER_SYSTEM) as u64, "{stats}");
    assert!(count("cold") > count("warm") && count("warm") > count("hot"), "{stats}");
    assert!(stats["tiers"]["cold"]["bytes"].as_u64().unwrap() > 0);

    // The oldest memory: cold, found only with include_cold, and by id.
    let query = json!({"query": "heron note 149 host 2", "limit": 1, "system_id": "host2.local"});
    let (_, hot_only) = http.post("/v1/search", &query).await;
    assert_ne!(hot_only["results"][0]["memory_id"], "m149", "{hot_only}");
    let mut with_cold = query.clone();
    with_cold["include_cold"] = json!(true);
    let (_, found) = http.post("/v1/search", &with_cold).await;
    let hit = &found["results"][0];
    assert_eq!((hit["memory_id"].as_str(), hit["tier"].as_str()), (Some("m149"), Some("cold")), "{found}");
    let (status, got) = http.get(&format!("/v1/memories/{}", hit["id"].as_str().unwrap())).await;
    assert_eq!((status, got["content"].as_str()), (200, Some("heron note 149 from host 2")));
    // Bad tier names are refused with the field named.
    let (status, err) = http.post("/v1/search", &json!({"query": "heron", "tiers": ["frozen"]})).await;
    assert_eq!(status, 400, "{err}");
    assert!(err.to_string().contains("tiers"), "{err}");

    // Parquet files sit in their partitions.
    let listed = walk(&bucket);
    assert!(!listed.is_empty());
    for f in &listed {
        let rel = f.strip_prefix(&bucket).unwrap().to_string_lossy().to_string();
        assert!(
            rel.starts_with("tenant=default/system_id=host") && rel.contains("/year=") && rel.ends_with(".parquet"),
            "{rel}"
        );
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_aging_neither_loses_nor_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let (data, bucket) = (dir.path().join("data"), dir.path().join("bucket"));
    let mut server = start(&data, &bucket);
    let mut http = Http::new(&server);
    seed(&http).await;
    let expected = exported(&http).await;
    assert_eq!(expected.len(), SYSTEMS * PER_SYSTEM);

    // Kill the server at several points of aging runs; each restart continues.
    let mut killed_mid_run = 0;
    for delay_ms in [5u64, 40, 120, 250] {
        let runner = {
            let http = http.clone();
            tokio::spawn(async move { http.try_post("/v1/tiers/run", &json!({})).await })
        };
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        server.kill9();
        if !matches!(runner.await.unwrap(), Ok((200, _))) {
            killed_mid_run += 1;
        }
        server = start(&data, &bucket);
        http = Http::new(&server);
        let seen = exported(&http).await;
        let duplicated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
        assert!(duplicated.is_empty(), "duplicated after a kill at {delay_ms} ms: {duplicated:?}");
        assert_eq!(
            seen.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>(),
            "lost after a kill at {delay_ms} ms"
        );
    }
    assert!(killed_mid_run > 0, "no kill landed inside an aging run; the test proves nothing");

    // A full run after the crashes completes the move and sweeps orphans.
    let (status, report) = http.post("/v1/tiers/run", &json!({})).await;
    assert_eq!(status, 200, "{report}");
    let (_, stats) = http.get("/v1/stats").await;
    let total: u64 = ["hot", "warm", "cold"].iter().map(|t| stats["tiers"][t]["memories"].as_u64().unwrap()).sum();
    assert_eq!(total, (SYSTEMS * PER_SYSTEM) as u64, "{stats}");
    // The next run sweeps what that run's merges replaced; then nothing is left over.
    let (_, report) = http.post("/v1/tiers/run", &json!({})).await;
    assert_eq!(report["files_merged"], 0, "{report}");
    let (_, report) = http.post("/v1/tiers/run", &json!({})).await;
    assert_eq!(report["orphans_removed"], 0, "orphans were swept by the previous runs: {report}");
    // Every file in the bucket is named by the catalog: the count matches the stats' files.
    let seen = exported(&http).await;
    assert_eq!(seen, expected);
}
