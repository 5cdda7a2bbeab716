//! The Akosha / Session-Buddy wire contract, driven with the exact bodies real
//! clients send, against the real server binary.

mod common;

use common::{axis_vector, Http, Server};
use serde_json::{json, Value};

fn seed_store_body() -> Value {
    json!({"method": "tools/call", "params": {"name": "store_memory", "arguments": {
        "memory_id": "test_mem_001", "text": "Test memory content", "embedding": vec![0.1f32; 384],
        "metadata": {"source": "test://localhost", "type": "session_memory"}}}})
}

fn is_iso_utc(s: &Value) -> bool {
    s.as_str().is_some_and(|s| s.ends_with("+00:00") && chrono_like(s))
}

fn chrono_like(s: &str) -> bool {
    s.len() >= 25 && s.as_bytes()[4] == b'-' && s.as_bytes()[10] == b'T'
}

#[tokio::test]
async fn seed_quick_test_stores_and_reports_the_contract_fields() {
    let server = Server::start();
    let http = Http::new(&server);
    let (status, body) = http.post("/mcp", &seed_store_body()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "stored");
    assert_eq!(body["memory_id"], "test_mem_001");
    assert_eq!(body["embedding_dim"], 384);
    assert_eq!(body["source"], "test://localhost");
    assert!(is_iso_utc(&body["stored_at"]), "{body}");
    let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 5, "exactly the contract's keys: {keys:?}");

    // The memory is really there, mapped as the contract says.
    let (_, listed) = http.get("/v1/memories?system_id=test://localhost").await;
    let m = &listed["memories"][0];
    assert_eq!(m["memory_id"], "test_mem_001");
    assert_eq!(m["kind"], "note", "session_memory maps to note");
    assert_eq!(m["ingestion_method"], "http_push");
    assert_eq!(m["metadata"]["type"], "session_memory", "metadata is kept whole");
    let (_, full) = http.get(&format!("/v1/memories/{}?include_embedding=true", m["id"].as_str().unwrap())).await;
    assert_eq!(full["embedding"].as_array().unwrap().len(), 384);
}

#[tokio::test]
async fn the_same_call_answers_on_every_compatibility_path() {
    let server = Server::start();
    let http = Http::new(&server);
    // Session-Buddy's HTTP fallback appends /mcp/v1 to http://host:8682/mcp.
    let (status, body) = http.post("/mcp/mcp/v1", &seed_store_body()).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("stored")), "{body}");

    // JSON-RPC 2.0 with an id, no session, no SSE accept: one JSON-RPC response.
    let rpc = json!({"jsonrpc": "2.0", "id": 42, "method": "tools/call", "params": {"name": "store_memory", "arguments": {
        "memory_id": "rpc-1", "text": "via json-rpc", "embedding": null, "metadata": {"source": "sb@host"}}}});
    let (status, body) = http.post("/mcp", &rpc).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["jsonrpc"], "2.0");
    assert_eq!(body["id"], 42);
    let result = &body["result"];
    assert_eq!(result["status"], "stored", "tool keys at top level: {result}");
    assert_eq!(result["embedding_dim"], 0, "no vector stored");
    assert_eq!(result["structuredContent"]["memory_id"], "rpc-1");
    let text = result["content"][0]["text"].as_str().unwrap();
    assert_eq!(serde_json::from_str::<Value>(text).unwrap(), result["structuredContent"]);

    // The raw push.
    for (key, id) in [("id", "raw-1"), ("memory_id", "raw-2")] {
        let body = json!({key: id, "text": "raw push", "embedding": axis_vector(3), "metadata": {"source": "akosha"}});
        let (status, out) = http.post("/mcp/store_memory", &body).await;
        assert_eq!(
            (status, out["status"].as_str(), out["memory_id"].as_str()),
            (200, Some("stored"), Some(id)),
            "{out}"
        );
    }

    for path in ["/mcp/status", "/status"] {
        let (status, body) = http.get(path).await;
        assert_eq!((status, body["status"].as_str()), (200, Some("ok")), "{path}");
    }
    let (_, health) = http.get("/health").await;
    // The contract's three keys, and readiness beside them (clients ignore keys they do not know).
    let contract = json!({"status": health["status"], "service": health["service"], "version": health["version"]});
    assert_eq!(contract, json!({"status": "ok", "service": "memhub", "version": env!("CARGO_PKG_VERSION")}));
    assert_eq!(health["ready"], true, "{health}");
    assert_eq!(http.get("/healthz").await, (200, json!({"status": "ok"})));
}

#[tokio::test]
async fn failures_use_the_contract_shape() {
    let server = Server::start();
    let http = Http::new(&server);
    let call = |name: &str, args: Value| json!({"method": "tools/call", "params": {"name": name, "arguments": args}});

    let (_, body) = http
        .post("/mcp", &call("store_memory", json!({"memory_id": "bad", "text": "x", "embedding": [0.1, 0.2]})))
        .await;
    assert_eq!(body["status"], "failed");
    assert_eq!(body["memory_id"], "bad");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("384") && error.contains("embedding"), "{error}");

    let (_, body) = http.post("/mcp", &call("store_memory", json!({"memory_id": "no-text"}))).await;
    assert_eq!(body["status"], "failed");
    assert!(body["error"].as_str().unwrap().contains("text"), "{body}");

    let (_, body) = http
        .post(
            "/mcp",
            &call("store_memory", json!({"memory_id": "t", "text": "x", "metadata": {"created_at": "last tuesday"}})),
        )
        .await;
    assert!(body["error"].as_str().unwrap().contains("metadata.created_at"), "{body}");

    // Over 1000 items: refused whole, with the exact message.
    let items: Vec<Value> = (0..1001).map(|i| json!({"memory_id": format!("m{i}"), "text": "x"})).collect();
    let (_, body) = http.post("/mcp", &call("batch_store_memories", json!({"memories": items}))).await;
    assert_eq!(
        body,
        json!({"status": "failed", "total": 1001, "stored": 0, "failed": 1001, "error": "Batch size exceeds maximum of 1000 memories"})
    );
    let (_, listed) = http.get("/v1/memories").await;
    assert_eq!(listed["memories"].as_array().unwrap().len(), 0, "nothing of the refused batch was written");

    let (status, body) = http.post("/mcp", &call("no_such_tool", json!({}))).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")), "{body}");
}

#[tokio::test]
async fn batch_store_reports_per_item_and_is_idempotent() {
    let server = Server::start();
    let http = Http::new(&server);
    let items = json!([
        {"memory_id": "b1", "text": "first", "embedding": axis_vector(1), "metadata": {"source": "sb", "type": "conversation", "created_at": "2025-03-01T10:00:00"}},
        {"memory_id": "b2", "text": "second", "metadata": {"source": "sb", "type": "reflection"}},
        {"memory_id": "b3", "text": "bad vector", "embedding": [1.0], "metadata": {"source": "sb"}},
        {"text": "no id"},
    ]);
    let body =
        json!({"method": "tools/call", "params": {"name": "batch_store_memories", "arguments": {"memories": items}}});
    let (_, out) = http.post("/mcp", &body).await;
    assert_eq!(out["status"], "partial", "{out}");
    assert_eq!((out["total"].as_u64(), out["stored"].as_u64(), out["failed"].as_u64()), (Some(4), Some(2), Some(2)));
    let errors = out["errors"].as_array().unwrap();
    assert_eq!(errors[0]["memory_id"], "b3");
    assert!(errors[0]["error"].as_str().unwrap().starts_with("memories[2].embedding: "), "{errors:?}");
    assert_eq!(errors[1]["memory_id"], Value::Null);
    assert!(errors[1]["error"].as_str().unwrap().contains("memory_id"), "{errors:?}");
    assert!(is_iso_utc(&out["stored_at"]));

    let (_, listed) = http.get("/v1/memories?system_id=sb").await;
    let kinds: Vec<&str> = listed["memories"].as_array().unwrap().iter().map(|m| m["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"conversation") && kinds.contains(&"reflection"), "{kinds:?}");
    let first = listed["memories"].as_array().unwrap().iter().find(|m| m["memory_id"] == "b1").unwrap();
    assert_eq!(first["created_at"], "2025-03-01T10:00:00.000000+00:00", "naive created_at is UTC");

    // Re-pushing the same batch changes nothing: no new versions.
    let (_, again) = http.post("/mcp", &body).await;
    assert_eq!(again["stored"], 2);
    let (_, history) = http.get(&format!("/v1/memories/{}/history", first["id"].as_str().unwrap())).await;
    assert_eq!(history["versions"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn session_buddy_reflections_entities_and_relations_are_stored() {
    let server = Server::start();
    let http = Http::new(&server);
    let call = |name: &str, args: Value| json!({"method": "tools/call", "params": {"name": name, "arguments": args}});
    let (_, r) = http
        .post("/mcp", &call("store_reflection", json!({"reflection_id": "r1", "content": "Tests before refactors save time",
            "embedding": axis_vector(9), "metadata": {"source": "sb@laptop", "insight_type": "workflow", "tags": ["testing"]}})))
        .await;
    assert_eq!(r["status"], "stored", "{r}");
    let (_, listed) = http.get("/v1/memories?kind=reflection&tags=testing").await;
    let m = &listed["memories"][0];
    assert_eq!((m["memory_id"].as_str(), m["system_id"].as_str()), (Some("r1"), Some("sb@laptop")));
    assert_eq!(m["attributes"]["insight_type"], "workflow", "declared keys become attributes");

    let entity = json!({"name": "memhub", "entity_type": "project", "observations": ["written in Rust"], "properties": null, "metadata": {"source": "sb"}});
    let (_, e1) = http.post("/mcp", &call("create_entity", entity.clone())).await;
    let (_, e2) = http.post("/mcp", &call("create_entity", entity)).await;
    assert!(e1["id"].as_str().is_some_and(|s| !s.is_empty()), "{e1}");
    assert_eq!(e1["id"], e2["id"], "entities are keyed by name and type");
    let (_, rel) = http
        .post("/mcp", &call("create_relation", json!({"from_entity": "memhub", "to_entity": "tantivy", "relation_type": "uses", "properties": {}, "metadata": null})))
        .await;
    assert!(rel["id"].as_str().is_some_and(|s| !s.is_empty()), "{rel}");
    let (_, stats) = http.get("/v1/stats").await;
    assert_eq!((stats["entities"].as_i64(), stats["relations"].as_i64()), (Some(1), Some(1)));
    let (_, bad) = http
        .post("/mcp", &call("create_relation", json!({"from_entity": "a", "to_entity": "", "relation_type": "x"})))
        .await;
    assert_eq!(bad["status"], "failed");
    assert_eq!(bad["field"], "to_entity");
}

#[tokio::test]
async fn search_tools_return_real_ranked_results() {
    let server = Server::start();
    let http = Http::new(&server);
    let call = |name: &str, args: Value| json!({"method": "tools/call", "params": {"name": name, "arguments": args}});
    let docs = [
        ("d1", "The deploy pipeline runs on Tuesdays", "ci", 1),
        ("d2", "Customer asked about invoice totals", "crm", 2),
        ("d3", "Deploy freeze during the holidays", "ci", 3),
    ];
    for (id, text, source, axis) in docs {
        let (_, r) = http
            .post("/mcp", &call("store_memory", json!({"memory_id": id, "text": text, "embedding": axis_vector(axis), "metadata": {"source": source}})))
            .await;
        assert_eq!(r["status"], "stored");
    }
    let (_, out) = http.post("/mcp", &call("search_all_systems", json!({"query": "deploy", "threshold": 0.5}))).await;
    let ids: Vec<&str> =
        out["results"].as_array().unwrap().iter().map(|r| r["conversation_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 2, "{out}");
    assert!(ids.contains(&"d1") && ids.contains(&"d3"));
    assert_eq!(out["total_results"], 2);
    assert_eq!(out["query"], "deploy");
    for r in out["results"].as_array().unwrap() {
        for key in ["system_id", "conversation_id", "content", "similarity", "timestamp"] {
            assert!(r.get(key).is_some(), "missing {key}: {r}");
        }
    }
    // A query vector finds the semantic neighbour even without shared words.
    let (_, out) = http
        .post(
            "/mcp",
            &call(
                "search_memories",
                json!({"query": "money questions", "query_embedding": axis_vector(2), "limit": 1}),
            ),
        )
        .await;
    assert_eq!(out["results"][0]["memory_id"], "d2", "{out}");
    assert_eq!(out["mode"], "hybrid");
    // Filters apply inside search.
    let (_, out) = http.post("/mcp", &call("search_memories", json!({"query": "deploy", "system_id": "crm"}))).await;
    assert_eq!(out["total_results"], 0, "{out}");
    // get / list / delete by memory_id.
    let (_, got) = http.post("/mcp", &call("get_memory", json!({"memory_id": "d3"}))).await;
    assert_eq!(got["memory"]["content"], "Deploy freeze during the holidays");
    let (_, page) = http.post("/mcp", &call("list_memories", json!({"system_id": "ci", "limit": 1}))).await;
    assert_eq!(page["count"], 1);
    let (_, page2) = http
        .post("/mcp", &call("list_memories", json!({"system_id": "ci", "limit": 1, "cursor": page["next_cursor"]})))
        .await;
    assert_ne!(page["memories"][0]["memory_id"], page2["memories"][0]["memory_id"]);
    assert_eq!(page2["next_cursor"], Value::Null);
    let (_, del) = http.post("/mcp", &call("delete_memory", json!({"memory_id": "d3", "system_id": "ci"}))).await;
    assert_eq!(del["status"], "deleted");
    let (_, gone) = http.post("/mcp", &call("get_memory", json!({"memory_id": "d3"}))).await;
    assert_eq!(gone["code"], "memory_not_found", "{gone}");
}

#[tokio::test]
async fn metadata_type_maps_to_typed_kinds_and_falls_back_to_note() {
    let server = Server::start();
    let http = Http::new(&server);
    let store = |id: &str, metadata: Value| json!({"method": "tools/call", "params": {"name": "store_memory", "arguments": {"memory_id": id, "text": "t", "metadata": metadata}}});
    let insight = json!({"source": "akosha", "type": "insight", "category": "perf", "confidence": 0.9, "recommendations": ["cache"], "extra": 1});
    assert_eq!(http.post("/mcp", &store("i1", insight)).await.1["status"], "stored");
    // `chat` requires message/response/...: Akosha cannot send them, so the write is kept as a note.
    assert_eq!(
        http.post("/mcp", &store("c1", json!({"source": "akosha", "type": "chat"}))).await.1["status"],
        "stored"
    );
    assert_eq!(
        http.post("/mcp", &store("u1", json!({"source": "akosha", "type": "mystery"}))).await.1["status"],
        "stored"
    );

    let (_, listed) = http.get("/v1/memories?system_id=akosha").await;
    let by_id =
        |id: &str| listed["memories"].as_array().unwrap().iter().find(|m| m["memory_id"] == id).unwrap().clone();
    let i1 = by_id("i1");
    assert_eq!(i1["kind"], "insight");
    assert_eq!(i1["attributes"], json!({"category": "perf", "confidence": 0.9, "recommendations": ["cache"]}));
    assert_eq!(i1["metadata"]["extra"], 1, "metadata kept whole");
    assert_eq!((by_id("c1")["kind"].as_str(), by_id("c1")["metadata"]["type"].as_str()), (Some("note"), Some("chat")));
    assert_eq!(
        (by_id("u1")["kind"].as_str(), by_id("u1")["metadata"]["type"].as_str()),
        (Some("note"), Some("mystery"))
    );
}
