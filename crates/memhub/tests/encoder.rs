//! The server with the local all-MiniLM-L6-v2 encoder: memories pushed without
//! vectors are embedded in the background and found by meaning.

mod common;

use std::time::{Duration, Instant};

use common::{model_dir, Http, Server};
use serde_json::{json, Value};

#[tokio::test]
async fn text_only_memories_are_embedded_and_found_by_meaning() {
    let model = model_dir();
    let server = Server::start_with_env(&[("MEMHUB_MODEL_DIR", model.to_str().unwrap())]);
    let http = Http::new(&server);
    let texts = [
        ("food", "A man is eating food."),
        ("guitar", "A man is playing a guitar."),
        ("cheetah", "A cheetah is running behind its prey."),
        ("deploy", "We deploy the billing service every Tuesday."),
    ];
    let memories: Vec<Value> = texts
        .iter()
        .map(|(id, t)| json!({"memory_id": id, "text": t, "embedding": null, "metadata": {"source": "st"}}))
        .collect();
    let body = json!({"method": "tools/call", "params": {"name": "batch_store_memories", "arguments": {"memories": memories}}});
    assert_eq!(http.post("/mcp", &body).await.1["stored"], 4);

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, stats) = http.get("/v1/stats").await;
        if stats["embedding_backlog"] == 0 && stats["with_embedding"] == 4 {
            break;
        }
        assert!(Instant::now() < deadline, "background embedding did not finish: {stats}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, listed) = http.get("/v1/memories?system_id=st").await;
    assert!(listed["memories"].as_array().unwrap().iter().all(|m| m["embedding_model"] == "all-MiniLM-L6-v2"));

    // No shared words with the stored text: only the encoder can find these.
    let ask = |q: &str| json!({"method": "tools/call", "params": {"name": "search_all_systems", "arguments": {"query": q, "threshold": 0.0, "limit": 1}}});
    for (query, want) in
        [("someone having a meal", "food"), ("a big cat hunting", "cheetah"), ("when do releases ship", "deploy")]
    {
        let (_, out) = http.post("/mcp", &ask(query)).await;
        assert_eq!(out["results"][0]["conversation_id"], want, "{query}: {out}");
        assert_eq!(out["mode"], "hybrid");
    }
    // Thresholds compare cosine similarity: an unrelated query finds nothing at 0.7.
    let (_, out) = http.post("/mcp", &json!({"method": "tools/call", "params": {"name": "search_all_systems", "arguments": {"query": "quarterly tax law"}}})).await;
    assert_eq!(out["total_results"], 0, "{out}");
}
