//! The REST API against the real server: lifecycle, versions, validation errors,
//! limits, filters, schemas and the Memory V2 aliases.

mod common;

use common::{axis_vector, Http, Server};
use serde_json::{json, Value};

#[tokio::test]
async fn memory_lifecycle_with_versions_and_history() {
    let server = Server::start();
    let http = Http::new(&server);
    let new = json!({"system_id": "slack", "memory_id": "msg-1", "kind": "decision", "content": "Use SQLite for the embedded store",
        "attributes": {"decision": "SQLite", "alternatives": ["redb"], "status": "accepted"}, "tags": ["storage"],
        "user_id": "ann", "created_at": "2025-06-01T12:00:00Z"});
    let (status, created) = http.post("/v1/memories", &new).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["status"], "created");
    let id = created["memory"]["id"].as_str().unwrap().to_string();
    assert_eq!(created["memory"]["version"], 1);
    assert_eq!(created["memory"]["content_hash"].as_str().unwrap().len(), 64);

    // Same content again: no-op.
    let (status, same) = http.post("/v1/memories", &new).await;
    assert_eq!((status, same["status"].as_str()), (200, Some("unchanged")));
    assert_eq!(same["memory"]["id"], id);

    // Changed content under the same key: version 2, old one in history.
    let mut changed = new.clone();
    changed["content"] = json!("Use SQLite in WAL mode for the embedded store");
    let (_, updated) = http.post("/v1/memories", &changed).await;
    assert_eq!((updated["status"].as_str(), updated["memory"]["version"].as_u64()), (Some("updated"), Some(2)));
    assert_eq!(updated["memory"]["id"], id, "the server id is stable across versions");

    let (status, patched) = http.patch(&format!("/v1/memories/{id}"), &json!({"tags": ["storage", "sqlite"]})).await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["memory"]["version"], 3);
    assert_eq!(patched["memory"]["content"], "Use SQLite in WAL mode for the embedded store");

    let (_, history) = http.get(&format!("/v1/memories/{id}/history")).await;
    let versions: Vec<u64> =
        history["versions"].as_array().unwrap().iter().map(|v| v["version"].as_u64().unwrap()).collect();
    assert_eq!(versions, vec![3, 2, 1]);
    assert_eq!(history["versions"][2]["content"], "Use SQLite for the embedded store");

    let (status, deleted) = http.delete(&format!("/v1/memories/{id}")).await;
    assert_eq!((status, deleted["status"].as_str()), (200, Some("deleted")));
    for path in [format!("/v1/memories/{id}"), format!("/v1/memories/{id}/history")] {
        let (status, body) = http.get(&path).await;
        assert_eq!((status, body["error"]["code"].as_str()), (404, Some("memory_not_found")), "{path}");
    }
    let (status, _) = http.delete(&format!("/v1/memories/{id}")).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn bad_input_gets_a_status_and_a_body_naming_the_field() {
    let server = Server::start_with_env(&[("MEMHUB_MAX_BODY_BYTES", "200000"), ("MEMHUB_MAX_CONTENT_BYTES", "1000")]);
    let http = Http::new(&server);
    let cases: Vec<(Value, u16, &str, &str)> = vec![
        (json!({"content": "x", "embedding": [0.5, 0.5]}), 400, "invalid_embedding_dimension", "embedding"),
        (json!({"content": ""}), 400, "invalid_field", "content"),
        (json!({"content": "x", "kind": "nope"}), 400, "unknown_kind", "kind"),
        (
            json!({"content": "x", "kind": "insight", "attributes": {"category": "c", "confidence": 2, "recommendations": []}}),
            422,
            "schema_validation_failed",
            "attributes.confidence",
        ),
        (json!({"content": "x", "tags": ["ok", 5]}), 400, "invalid_field", "tags[1]"),
        (json!({"content": "x", "colour": "red"}), 400, "invalid_field", "colour"),
        (json!({"content": "x", "created_at": "soon"}), 400, "invalid_field", "created_at"),
        (json!({"content": "y".repeat(1001)}), 413, "content_too_long", "content"),
    ];
    for (body, status, code, field) in cases {
        let (got, out) = http.post("/v1/memories", &body).await;
        assert_eq!(got, status, "{body} -> {out}");
        assert_eq!(out["error"]["code"], code, "{out}");
        let f = out["error"]["field"].as_str().unwrap_or_else(|| out["error"]["message"].as_str().unwrap());
        assert!(f.contains(field), "{field} not named in {out}");
        assert!(out["error"]["message"].as_str().unwrap().contains(field), "{out}");
    }
    let (status, out) = http.post_raw("/v1/memories", "{not json", &[("content-type", "application/json")]).await;
    assert_eq!((status, out["error"]["code"].as_str()), (400, Some("invalid_json")));
    let big = json!({"content": "z".repeat(300_000)}).to_string();
    let (status, out) = http.post_raw("/v1/memories", big, &[("content-type", "application/json")]).await;
    assert_eq!((status, out["error"]["code"].as_str()), (413, Some("payload_too_large")), "{out}");
    let big_call = json!({"method": "tools/call", "params": {"name": "store_memory",
        "arguments": {"memory_id": "big", "text": "z".repeat(300_000)}}})
    .to_string();
    let (status, out) = http.post_raw("/mcp", big_call, &[("content-type", "application/json")]).await;
    assert_eq!((status, out["error"]["code"].as_str()), (413, Some("payload_too_large")), "{out}");
    let (status, out) = http.get("/v1/memories/not-a-uuid").await;
    assert_eq!((status, out["error"]["field"].as_str()), (400, Some("id")));
    let (status, out) = http.get("/v1/memories?cursor=garbage").await;
    assert_eq!((status, out["error"]["code"].as_str()), (400, Some("invalid_cursor")));
    let (status, out) = http.post("/v1/search", &json!({"query": ""})).await;
    assert_eq!((status, out["error"]["field"].as_str()), (400, Some("query")));
    let (status, out) = http.post("/v1/search", &json!({"query": "x", "limit": 0})).await;
    assert_eq!((status, out["error"]["field"].as_str()), (400, Some("limit")));
    let (status, out) = http.get("/v1/nothing-here").await;
    assert_eq!((status, out["error"]["code"].as_str()), (404, Some("not_found")));
    let (_, listed) = http.get("/v1/memories").await;
    assert_eq!(listed["memories"], json!([]), "no failed request wrote anything");
}

#[tokio::test]
async fn batch_writes_valid_items_in_one_transaction_and_reports_the_rest() {
    let server = Server::start();
    let http = Http::new(&server);
    let batch = json!({"memories": [
        {"system_id": "gh", "memory_id": "1", "content": "opened PR", "embedding": axis_vector(1)},
        {"system_id": "gh", "memory_id": "2", "content": "bad", "embedding": [1.0]},
        {"system_id": "gh", "memory_id": "3", "content": "merged PR", "unknown_field": 1},
        {"system_id": "gh", "memory_id": "4", "content": "closed issue"},
    ]});
    let (status, out) = http.post("/v1/memories/batch", &batch).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(
        (out["status"].as_str(), out["stored"].as_u64(), out["failed"].as_u64()),
        (Some("partial"), Some(2), Some(2))
    );
    let fields: Vec<String> =
        out["errors"].as_array().unwrap().iter().map(|e| e["error"].as_str().unwrap().to_string()).collect();
    assert!(fields[0].starts_with("memories[1].embedding"), "{fields:?}");
    assert!(fields[1].contains("memories[2]") && fields[1].contains("unknown_field"), "{fields:?}");
    // An unparseable item before an invalid one must not shift the reported index.
    let shifted = json!({"memories": [
        {"content": "x", "bogus": true},
        {"content": "y", "embedding": [1.0]},
    ]});
    let (_, out) = http.post("/v1/memories/batch", &shifted).await;
    let messages: Vec<&str> = out["errors"].as_array().unwrap().iter().map(|e| e["error"].as_str().unwrap()).collect();
    assert!(messages[1].starts_with("memories[1].embedding: "), "{messages:?}");
    let too_many: Vec<Value> = (0..1001).map(|i| json!({"content": format!("m{i}")})).collect();
    let (status, out) = http.post("/v1/memories/batch", &json!({"memories": too_many})).await;
    assert_eq!((status, out["error"]["code"].as_str()), (413, Some("batch_too_large")));
    let (_, stats) = http.get("/v1/stats").await;
    assert_eq!(stats["memories"], 2);
}

#[tokio::test]
async fn list_and_search_apply_every_filter_and_tenants_stay_apart() {
    let server = Server::start();
    let http = Http::new(&server);
    let mut items = Vec::new();
    for i in 0..30 {
        items.push(json!({
            "system_id": if i % 2 == 0 { "slack" } else { "linear" },
            "memory_id": format!("m{i}"),
            "content": format!("note {i} about {}", if i % 3 == 0 { "billing" } else { "onboarding" }),
            "tags": if i % 5 == 0 { json!(["urgent", "q3"]) } else { json!(["q3"]) },
            "user_id": format!("user{}", i % 3),
            "session_id": format!("s{}", i % 4),
            "project": "apollo",
            "metadata": {"speaker": if i < 15 { "ann" } else { "bob" }},
            "created_at": format!("2025-01-{:02}T00:00:00Z", i + 1),
            "embedding": axis_vector(i),
        }));
    }
    let (_, out) = http.post("/v1/memories/batch", &json!({"memories": items})).await;
    assert_eq!(out["stored"], 30);
    let (_, other) = http
        .post_raw(
            "/v1/memories",
            json!({"content": "note about billing in another tenant"}).to_string(),
            &[("content-type", "application/json"), ("x-memhub-tenant", "acme")],
        )
        .await;
    assert_eq!(other["status"], "created");
    // A body naming a tenant other than the one the request acts in is refused.
    let (status, refused) = http
        .post_raw(
            "/v1/memories",
            json!({"content": "smuggled", "tenant": "acme"}).to_string(),
            &[("content-type", "application/json")],
        )
        .await;
    assert_eq!((status, refused["error"]["code"].as_str()), (403, Some("forbidden")), "{refused}");

    let count = |v: &Value| v["memories"].as_array().unwrap().len();
    let (_, page) = http.get("/v1/memories?system_id=slack&tags=urgent").await;
    assert_eq!(count(&page), 3, "i in {{0, 10, 20}}");
    let (_, page) = http.get("/v1/memories?since=2025-01-10T00:00:00Z&until=2025-01-12T00:00:00Z").await;
    assert_eq!(count(&page), 2);
    assert_eq!(page["memories"][0]["memory_id"], "m10", "newest first");
    let (_, page) = http.get("/v1/memories?user_id=user1&session_id=s1").await;
    assert_eq!(count(&page), 3, "i = 1, 13, 25");

    // Paging visits every memory exactly once.
    let mut seen = std::collections::HashSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/memories?limit=7&cursor={c}"),
            None => "/v1/memories?limit=7".to_string(),
        };
        let (_, page) = http.get(&path).await;
        for m in page["memories"].as_array().unwrap() {
            assert!(seen.insert(m["memory_id"].as_str().unwrap().to_string()));
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 30, "the other tenant's memory is not listed");

    let search = |body: Value| {
        let http = http.clone();
        async move { http.post("/v1/search", &body).await.1 }
    };
    let out = search(json!({"query": "billing", "limit": 50})).await;
    assert_eq!(out["total_results"], 10, "{out}");
    assert!(out["results"].as_array().unwrap().iter().all(|h| h["tenant"] == "default"));
    let out = search(json!({"query": "billing", "metadata": {"speaker": "bob"}, "kind": "note"})).await;
    assert_eq!(out["total_results"], 5, "i in {{15, 18, 21, 24, 27}}: {out}");
    let out = search(json!({"query": "billing", "tags_all": ["urgent", "q3"]})).await;
    assert_eq!(out["total_results"], 2, "i in {{0, 15}}");
    // A filter matching fewer than `limit` memories returns exactly those.
    let out = search(json!({"query": "onboarding", "query_embedding": axis_vector(7), "user_id": "user1", "project": "apollo", "limit": 10})).await;
    let ids: Vec<&str> = out["results"].as_array().unwrap().iter().map(|h| h["memory_id"].as_str().unwrap()).collect();
    assert_eq!(ids[0], "m7", "the vector's nearest neighbour ranks first: {ids:?}");
    assert!(ids.iter().all(|id| id[1..].parse::<usize>().unwrap() % 3 == 1));
    let out = search(json!({"query": "zebra"})).await;
    assert_eq!(out["total_results"], 0);
    let (_, acme) = http
        .post_raw(
            "/v1/search",
            json!({"query": "billing"}).to_string(),
            &[("content-type", "application/json"), ("x-memhub-tenant", "acme")],
        )
        .await;
    assert_eq!(acme["total_results"], 1);
    assert_eq!(acme["results"][0]["tenant"], "acme");
    let (_, unicode) = http.post("/v1/memories", &json!({"content": "Ünïcødé 日本語のメモ café"})).await;
    assert_eq!(unicode["status"], "created");
    let out = search(json!({"query": "CAFÉ ünïcødé"})).await;
    assert_eq!(out["results"][0]["content"], "Ünïcødé 日本語のメモ café");
}

#[tokio::test]
async fn schemas_can_be_registered_and_old_versions_stay_valid() {
    let server = Server::start();
    let http = Http::new(&server);
    let (_, listed) = http.get("/v1/schemas").await;
    let kinds: Vec<&str> = listed["schemas"].as_array().unwrap().iter().map(|s| s["kind"].as_str().unwrap()).collect();
    for k in ["chat", "event", "insight", "decision", "context", "conversation", "reflection", "note"] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    let ticket = json!({"kind": "ticket", "description": "a support ticket",
        "schema": {"type": "object", "required": ["priority"], "properties": {"priority": {"enum": ["p1", "p2"]}}}});
    let (status, s) = http.post("/v1/schemas", &ticket).await;
    assert_eq!((status, s["version"].as_u64()), (201, Some(1)), "{s}");
    let (status, _) = http.post("/v1/schemas", &ticket).await;
    assert_eq!(status, 200, "identical re-registration is a no-op");
    let (status, out) = http
        .post(
            "/v1/memories",
            &json!({"kind": "ticket", "content": "printer on fire", "attributes": {"priority": "p0"}}),
        )
        .await;
    assert_eq!((status, out["error"]["field"].as_str()), (422, Some("attributes.priority")));
    let (status, _) = http
        .post(
            "/v1/memories",
            &json!({"kind": "ticket", "content": "printer on fire", "attributes": {"priority": "p1"}}),
        )
        .await;
    assert_eq!(status, 201);
    let v2 = json!({"kind": "ticket", "schema": {"type": "object", "required": ["priority", "team"]}});
    let (_, s2) = http.post("/v1/schemas", &v2).await;
    assert_eq!(s2["version"], 2);
    let (status, _) =
        http.post("/v1/memories", &json!({"kind": "ticket", "content": "a", "attributes": {"priority": "p1"}})).await;
    assert_eq!(status, 422, "the latest version is used by default");
    let (status, out) = http
        .post(
            "/v1/memories",
            &json!({"kind": "ticket", "schema_version": 1, "content": "a", "attributes": {"priority": "p1"}}),
        )
        .await;
    assert_eq!(status, 201, "{out}");
    let (status, out) =
        http.post("/v1/schemas", &json!({"kind": "ticket", "version": 1, "schema": {"type": "object"}})).await;
    assert_eq!((status, out["error"]["code"].as_str()), (409, Some("schema_version_exists")));
    let (status, out) = http.post("/v1/schemas", &json!({"kind": "bad", "schema": {"type": 12}})).await;
    assert_eq!((status, out["error"]["code"].as_str()), (400, Some("invalid_schema")));
    drop(server);
}

#[tokio::test]
async fn memory_v2_aliases_and_openapi() {
    let server = Server::start();
    let http = Http::new(&server);
    let (status, stored) =
        http.post("/api/v2/memory/store", &json!({"content": "v2 store", "system_id": "v2", "memory_id": "x1"})).await;
    assert_eq!(status, 201, "{stored}");
    let id = stored["memory"]["id"].as_str().unwrap().to_string();
    let (_, _) =
        http.post("/memory/store", &json!({"content": "v1 alias store", "system_id": "v2", "memory_id": "x2"})).await;
    let (_, by_id) = http.post("/memory/retrieve", &json!({"id": id})).await;
    assert_eq!(by_id["memory"]["content"], "v2 store");
    let (_, by_key) = http.post("/api/v2/memory/retrieve", &json!({"memory_id": "x2", "system_id": "v2"})).await;
    assert_eq!(by_key["memory"]["content"], "v1 alias store");
    let (_, filtered) = http.post("/api/v2/memory/retrieve", &json!({"system_id": "v2"})).await;
    assert_eq!(filtered["memories"].as_array().unwrap().len(), 2);
    for path in ["/memory/search", "/api/v2/memory/search"] {
        let (_, found) = http.post(path, &json!({"query": "alias"})).await;
        assert_eq!(found["results"][0]["memory_id"], "x2", "{path}");
    }
    let (_, got) = http.get(&format!("/api/v2/memory/{id}")).await;
    assert_eq!(got["memory_id"], "x1");
    let (_, stats) = http.get("/api/v2/memory/stats").await;
    assert_eq!(stats["memories"], 2);
    let (_, health) = http.get("/api/v2/memory/health").await;
    assert_eq!(health["status"], "ok");
    let (status, _) = http.delete(&format!("/api/v2/memory/{id}")).await;
    assert_eq!(status, 200);

    let (status, doc) = http.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{}", doc["openapi"]);
    for path in [
        "/v1/memories",
        "/v1/memories/batch",
        "/v1/memories/{id}",
        "/v1/memories/{id}/history",
        "/v1/search",
        "/v1/schemas",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} missing from the OpenAPI document");
    }
}
