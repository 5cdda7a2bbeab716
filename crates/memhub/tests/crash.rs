//! Durability: a server receiving batches is SIGKILLed mid-stream. After a restart
//! every acknowledged batch is fully there and no batch is there in part.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{axis_vector, Http, Server};
use serde_json::{json, Value};

const PER_BATCH: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_batches_survive_sigkill_and_none_is_partial() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_in(dir.path(), &[]);
    let http = Http::new(&server);
    // A first batch the text index commits before the storm: after the kill, only
    // what came later is caught up, not everything.
    let base: Vec<Value> = (0..PER_BATCH)
        .map(|j| json!({"system_id": "base", "memory_id": format!("{j}"), "content": format!("base item {j}")}))
        .collect();
    let (_, out) = http.post("/v1/memories/batch", &json!({ "memories": base })).await;
    assert_eq!(out["stored"], PER_BATCH);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while http.get("/v1/stats").await.1["index"]["pending_text"] != 0 {
        assert!(std::time::Instant::now() < deadline, "the text index never took the first batch");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..3 {
        let (http, acked) = (http.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            for k in 0.. {
                let system = format!("w{w}-b{k}");
                let memories: Vec<Value> = (0..PER_BATCH)
                    .map(|j| json!({"system_id": system, "memory_id": format!("{j}"), "content": format!("batch {k} item {j}"), "embedding": axis_vector(j)}))
                    .collect();
                let body = json!({ "memories": memories });
                let sent = tokio::time::timeout(Duration::from_secs(5), http.try_post("/v1/memories/batch", &body));
                match sent.await {
                    Ok(Ok((200, out))) if out["stored"] == PER_BATCH => acked.lock().unwrap().push(system),
                    _ => return,
                }
            }
        }));
    }
    // Let acknowledgements accumulate, then kill without warning.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while acked.lock().unwrap().len() < 30 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill9();
    for w in writers {
        // Writers end on the first failed request; a panic would surface here.
        tokio::time::timeout(Duration::from_secs(10), w).await.expect("writer ends").expect("writer did not panic");
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 30, "only {} batches acknowledged before the kill", acked.len());

    let server = Server::start_in(dir.path(), &[]);
    let http = Http::new(&server);
    let (_, stats) = http.get("/v1/stats").await;
    let by_system = stats["by_system"].as_object().unwrap();
    for system in &acked {
        assert_eq!(
            by_system.get(system).and_then(Value::as_u64),
            Some(PER_BATCH as u64),
            "acknowledged batch {system} lost rows"
        );
    }
    for (system, n) in by_system {
        assert_eq!(n.as_u64(), Some(PER_BATCH as u64), "batch {system} is partial");
    }
    let memories = stats["memories"].as_u64().unwrap();
    let caught_up = stats["index"]["caught_up_text"].as_u64().unwrap();
    assert!(caught_up <= memories - PER_BATCH as u64, "the text index resumed from its checkpoint: {stats}");
    // The caught-up indexes serve what the store holds, by text and by vector.
    for system in [acked[0].as_str(), acked[acked.len() - 1].as_str(), "base"] {
        let (_, found) = http.post("/v1/search", &json!({"query": "item", "system_id": system, "limit": 100})).await;
        assert_eq!(found["total_results"], PER_BATCH, "{found}");
    }
    let (_, found) =
        http.post("/v1/search", &json!({"query_embedding": axis_vector(7), "system_id": acked[0], "limit": 1})).await;
    assert_eq!(found["results"][0]["memory_id"], "7", "{found}");
}
