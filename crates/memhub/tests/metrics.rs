//! `GET /metrics`: what a Prometheus scrape shows after real traffic (REST writes,
//! searches, an MCP tool call, a failed request), and who may scrape when auth is
//! required (a superadmin, or the scrape token, which opens nothing else).

mod common;

use common::{create_key, metric_sample as sample, Http, Server};
use serde_json::json;

async fn scrape(base: &str, token: Option<&str>) -> (u16, String, String) {
    let mut req = reqwest::Client::new().get(format!("{base}/metrics"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let kind = resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    (status, kind, resp.text().await.unwrap())
}

#[tokio::test]
async fn a_scrape_counts_writes_searches_tool_calls_and_requests_by_route() {
    let server = Server::start();
    let http = Http::new(&server);
    for i in 0..2 {
        let (status, out) = http
            .post("/v1/memories", &json!({"memory_id": format!("m{i}"), "content": format!("deploy note {i}")}))
            .await;
        assert!(status < 300, "{out}");
    }
    let (status, _) = http.post("/v1/memories", &json!({"memory_id": "m0", "content": "deploy note 0"})).await;
    assert!(status < 300);
    let (status, _) = http.post("/v1/search", &json!({"query": "deploy"})).await;
    assert_eq!(status, 200);
    let (status, _) = http.post("/v1/search", &json!({"query": ""})).await;
    assert_eq!(status, 400);
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                      "params": {"name": "store_memory", "arguments": {"memory_id": "t1", "text": "from a tool"}}});
    let (status, out) = http.post_raw("/mcp", call.to_string(), &[("content-type", "application/json")]).await;
    assert_eq!(status, 200, "{out}");
    let (status, _) = http.get("/v1/memories/0190a6b0-0000-7000-8000-000000000000").await;
    assert_eq!(status, 404);

    // Any token is a method: a made-up one must not become a label of its own.
    let odd = reqwest::Method::from_bytes(b"XQ7ZMETHOD").unwrap();
    let resp = reqwest::Client::new().request(odd, server.url("/health")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 405);

    let (status, kind, text) = scrape(&server.base, None).await;
    assert_eq!(status, 200, "open mode (loopback) may scrape: {text}");
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    let created = "memhub_memories_written_total{method=\"rest\",outcome=\"created\"}";
    assert_eq!(sample(&text, created), Some(2.0), "{text}");
    let unchanged = "memhub_memories_written_total{method=\"rest\",outcome=\"unchanged\"}";
    assert_eq!(sample(&text, unchanged), Some(1.0), "{text}");
    // A session-less tools/call is the clients' HTTP push path.
    let pushed = "memhub_memories_written_total{method=\"http_push\",outcome=\"created\"}";
    assert_eq!(sample(&text, pushed), Some(1.0), "{text}");
    assert_eq!(sample(&text, "memhub_mcp_tool_calls_total{tool=\"store_memory\",status=\"200\"}"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "memhub_searches_total{mode=\"keyword\",cold=\"false\"}"), Some(1.0), "{text}");
    let posts = "memhub_http_requests_total{method=\"POST\",route=\"/v1/search\",status=\"200\"}";
    assert_eq!(sample(&text, posts), Some(1.0), "{text}");
    let bad = "memhub_http_requests_total{method=\"POST\",route=\"/v1/search\",status=\"400\"}";
    assert_eq!(sample(&text, bad), Some(1.0), "{text}");
    let by_id = "memhub_http_requests_total{method=\"GET\",route=\"/v1/memories/{id}\",status=\"404\"}";
    assert_eq!(sample(&text, by_id), Some(1.0), "the route template, never the id: {text}");
    assert!(!text.contains("0190a6b0"), "no id in a label");
    let other = "memhub_http_requests_total{method=\"OTHER\",route=\"/health\",status=\"405\"}";
    assert_eq!(sample(&text, other), Some(1.0), "{text}");
    assert!(!text.contains("XQ7Z"), "{text}");
    assert_eq!(sample(&text, "memhub_indexed_memories"), Some(3.0), "{text}");
    assert_eq!(sample(&text, "memhub_cold_memories"), Some(0.0), "{text}");
    // Histograms have buckets (aggregatable across replicas), and every metric is described.
    let le = "memhub_search_duration_seconds_bucket{mode=\"keyword\",cold=\"false\",le=\"+Inf\"}";
    assert_eq!(sample(&text, le), Some(1.0), "{text}");
    assert!(text.contains("# HELP memhub_memories_written_total "), "{text}");
    assert!(text.contains("# TYPE memhub_http_request_duration_seconds histogram"), "{text}");

    // A second scrape sees the first one counted.
    let (_, _, again) = scrape(&server.base, None).await;
    let scrapes = "memhub_http_requests_total{method=\"GET\",route=\"/metrics\",status=\"200\"}";
    assert_eq!(sample(&again, scrapes), Some(1.0), "{again}");
}

#[tokio::test]
async fn with_auth_only_a_superadmin_or_the_scrape_token_may_scrape() {
    let tmp = tempfile::tempdir().unwrap();
    let admin = create_key(tmp.path(), &["--role", "admin", "--tenant", "acme"]);
    let root = create_key(tmp.path(), &["--role", "admin", "--tenant", "acme", "--superadmin"]);
    let token = "scrape-token-0123456789abcdef";
    let server = Server::start_in(tmp.path(), &[("MEMHUB_METRICS_TOKEN", token)]);

    assert_eq!(scrape(&server.base, None).await.0, 401, "no credentials");
    assert_eq!(scrape(&server.base, Some("scrape-token-0123456789abcdeX")).await.0, 401, "a wrong token");
    let (status, _, text) = scrape(&server.base, Some(&admin)).await;
    assert_eq!(status, 403, "a tenant admin sees one tenant, the metrics are the process's: {text}");
    assert!(text.contains("superadmin"), "{text}");
    assert_eq!(scrape(&server.base, Some(&root)).await.0, 200);
    let (status, _, text) = scrape(&server.base, Some(token)).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("memhub_http_requests_total"), "{text}");

    // The token opens /metrics and nothing else.
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/search", server.base))
        .bearer_auth(token)
        .json(&json!({"query": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
}

#[test]
fn a_short_scrape_token_is_refused_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::memhub_bin())
        .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(tmp.path())
        .env("MEMHUB_METRICS_TOKEN", "short")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("MEMHUB_METRICS_TOKEN") && err.contains("16 characters"), "{err}");
}
