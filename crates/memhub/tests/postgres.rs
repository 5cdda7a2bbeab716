//! `storage.backend = "postgres"`: the server keeps its memories in PostgreSQL
//! (`MEMHUB_TEST_POSTGRES_URL`, a cluster `scripts/test.sh` starts) and only its
//! derived indexes in the data dir, so a second server with an empty data dir
//! serves the same memories.

mod common;

use common::{axis_vector, Http, Server};
use serde_json::{json, Value};

fn fresh_database() -> String {
    let admin = std::env::var("MEMHUB_TEST_POSTGRES_URL").expect(
        "MEMHUB_TEST_POSTGRES_URL names a PostgreSQL database to create test databases from: run scripts/test.sh",
    );
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    memhub_postgres::create_database(&admin, &format!("memhub_server_{}_{}", std::process::id(), nanos % 1_000_000_000))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_an_empty_data_dir_serves_what_another_acknowledged_before_it_was_killed() {
    let url = fresh_database();
    let env = [("MEMHUB_STORAGE_BACKEND", "postgres"), ("MEMHUB_POSTGRES_URL", url.as_str())];
    let first_dir = tempfile::tempdir().unwrap();
    let mut first = Server::start_in(first_dir.path(), &env);
    let http = Http::new(&first);
    let memories: Vec<Value> = (0..20)
        .map(|i| {
            json!({"system_id": "pg", "memory_id": format!("m{i}"), "kind": "note",
                   "content": format!("deploy note number {i} about the tuesday release"), "embedding": axis_vector(i)})
        })
        .collect();
    let (status, out) = http.post("/v1/memories/batch", &json!({ "memories": memories })).await;
    assert_eq!((status, out["stored"].clone()), (200, json!(20)), "{out}");
    let (status, one) = http
        .post(
            "/v1/memories",
            &json!({"system_id": "pg", "memory_id": "single", "kind": "note", "content": "the rollback plan"}),
        )
        .await;
    assert_eq!(status, 201, "{one}");
    // Acknowledged, then killed: nothing graceful runs.
    first.kill9();
    assert!(!first_dir.path().join("memhub.db").exists(), "memories are not kept in the data dir");

    let second_dir = tempfile::tempdir().unwrap();
    let second = Server::start_in(second_dir.path(), &env);
    let http = Http::new(&second);
    let (_, stats) = http.get("/v1/stats").await;
    assert_eq!(stats["memories"], 21, "{stats}");
    let (status, found) = http.post("/v1/search", &json!({"query": "rollback plan", "limit": 3})).await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["results"][0]["memory_id"], "single", "{found}");
    let (_, found) = http.post("/v1/search", &json!({"query_embedding": axis_vector(7), "limit": 1})).await;
    assert_eq!(found["results"][0]["memory_id"], "m7", "{found}");
    let id = one["memory"]["id"].as_str().unwrap();
    let (status, got) = http.get(&format!("/v1/memories/{id}")).await;
    assert_eq!((status, got["content"].clone()), (200, json!("the rollback plan")), "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_backend_without_a_url_refuses_to_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::memhub_bin())
        .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("MEMHUB_STORAGE_BACKEND", "postgres")
        .env_remove("MEMHUB_POSTGRES_URL")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("storage.postgres.url"), "{stderr}");
}
