//! Every error is the catalogue's JSON (`{"error": {"code", "type", "message",
//! "field"}}`), the ones axum's router and extractors make included: a malformed
//! query string on any route, and a method a route does not take.

mod common;

use common::Server;
use serde_json::Value;

/// Every route the server has, with the methods it takes (`/mcp` takes any).
const ROUTES: &[(&str, &[&str])] = &[
    ("/v1/memories", &["POST", "GET"]),
    ("/v1/memories/batch", &["POST"]),
    ("/v1/memories/{id}", &["GET", "PATCH", "DELETE"]),
    ("/v1/memories/{id}/history", &["GET"]),
    ("/v1/search", &["POST"]),
    ("/v1/schemas", &["GET", "POST"]),
    ("/v1/stats", &["GET"]),
    ("/memory/store", &["POST"]),
    ("/memory/retrieve", &["POST"]),
    ("/memory/search", &["POST"]),
    ("/api/v2/memory/store", &["POST"]),
    ("/api/v2/memory/retrieve", &["POST"]),
    ("/api/v2/memory/search", &["POST"]),
    ("/api/v2/memory/stats", &["GET"]),
    ("/api/v2/memory/health", &["GET"]),
    ("/api/v2/memory/{id}", &["GET", "PATCH", "DELETE"]),
    ("/mcp/store_memory", &["POST"]),
    ("/mcp/status", &["GET"]),
    ("/v1/export", &["GET"]),
    ("/v1/keys", &["POST", "GET"]),
    ("/v1/keys/{id}", &["DELETE"]),
    ("/v1/retention", &["GET", "PUT"]),
    ("/v1/erase", &["POST"]),
    ("/v1/tiers/run", &["POST"]),
    ("/v1/ingest/status", &["GET"]),
    ("/v1/ingest/run", &["POST"]),
    ("/v1/audit", &["GET"]),
    ("/v1/events", &["GET"]),
    ("/v1/webhooks", &["GET", "POST"]),
    ("/v1/webhooks/{id}", &["GET", "PATCH", "DELETE"]),
    ("/v1/webhooks/{id}/deliveries", &["GET"]),
    ("/status", &["GET"]),
    ("/health", &["GET"]),
    ("/healthz", &["GET"]),
    ("/openapi.json", &["GET"]),
    ("/metrics", &["GET"]),
];

/// A query string every route's parameters would refuse.
const BAD_QUERY: &str =
    "limit=abc&include_embedding=maybe&since=yesterday-ish&until=%ZZ&tags=a&cursor=%00&actor=x&action=y";

async fn send(client: &reqwest::Client, method: &str, url: &str) -> (u16, String, Option<String>, Value) {
    let resp = client.request(method.parse().unwrap(), url).send().await.unwrap();
    let status = resp.status().as_u16();
    let header = |name: &str| resp.headers().get(name).map(|v| v.to_str().unwrap().to_string());
    let (content_type, allow) = (header("content-type").unwrap_or_default(), header("allow"));
    let body = resp.text().await.unwrap();
    let json = serde_json::from_str(&body).unwrap_or(Value::String(body));
    (status, content_type, allow, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_bad_queries_and_wrong_methods_with_the_catalogue() {
    let server = Server::start();
    let client = reqwest::Client::new();
    let id = "0190f0f0-0000-7000-8000-000000000000";
    let url = |path: &str, query: &str| format!("{}{}?{query}", server.base, path.replace("{id}", id));

    // The documented routes are all in the table above, so a new one is walked too.
    let (_, _, _, doc) = send(&client, "GET", &url("/openapi.json", "")).await;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        let listed = ROUTES.iter().find(|(p, _)| p == path).unwrap_or_else(|| panic!("{path} is not in ROUTES"));
        for method in ops.as_object().unwrap().keys() {
            assert!(listed.1.contains(&method.to_uppercase().as_str()), "{method} {path} is not in ROUTES");
        }
    }

    for (path, methods) in ROUTES {
        let wrong = ["PUT", "POST", "DELETE", "PATCH"].into_iter().find(|m| !methods.contains(m)).unwrap();
        let (status, content_type, allow, body) = send(&client, wrong, &url(path, "")).await;
        assert_eq!(status, 405, "{wrong} {path}: {body}");
        assert!(content_type.starts_with("application/json"), "{wrong} {path}: {content_type}");
        assert_eq!(body["error"]["code"], "method_not_allowed", "{wrong} {path}: {body}");
        let allow = allow.unwrap_or_else(|| panic!("{wrong} {path}: no Allow header"));
        for m in *methods {
            assert!(allow.contains(m), "{wrong} {path}: Allow {allow:?} lacks {m}");
        }

        // A malformed query string is never a plain-text or 5xx answer.
        for method in *methods {
            let (status, content_type, _, body) = send(&client, method, &url(path, BAD_QUERY)).await;
            assert!(status < 500, "{method} {path}?{BAD_QUERY}: {status} {body}");
            if status >= 400 {
                assert!(
                    content_type.starts_with("application/json"),
                    "{method} {path}: {status} {content_type} {body}"
                );
                assert!(body["error"]["code"].is_string(), "{method} {path}: {body}");
            }
        }
    }

    // The routes that read a query string name the parameter they refuse.
    for (path, query, field) in [
        ("/v1/memories", "limit=abc", "limit"),
        ("/v1/memories", "since=yesterday-ish", "since"),
        ("/v1/memories/{id}", "include_embedding=maybe", "include_embedding"),
        ("/v1/audit", "limit=-1", "limit"),
        ("/v1/events", "after=-1", "after"),
    ] {
        let (status, _, _, body) = send(&client, "GET", &url(path, query)).await;
        assert_eq!(status, 400, "{path}?{query}: {body}");
        assert_eq!(
            (body["error"]["code"].as_str(), body["error"]["field"].as_str()),
            (Some("invalid_field"), Some(field)),
            "{path}?{query}: {body}"
        );
    }
    // And an unknown route is the catalogue's 404.
    let (status, _, _, body) = send(&client, "GET", &url("/v1/nothing-here", "")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")), "{body}");
}
