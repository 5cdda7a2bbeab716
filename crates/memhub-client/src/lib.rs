//! A client for memhub hubs (and for the Akosha-compatible MCP tools of any hub
//! that speaks them).
//!
//! - **Typed**: requests and answers are `memhub-types` values; a refusal is a
//!   [`ClientError::Api`] carrying the hub's `{code, message, field}`.
//! - **Retries** transport failures, `429` and `502`/`503`/`504` with exponential
//!   backoff and full jitter ([`RetryPolicy`]); other answers are final. Writes that
//!   carry a `memory_id` are idempotent on the hub, so retrying them never
//!   duplicates; a write without one may, if an answer is lost.
//! - **Falls back between endpoints**: each attempt tries the endpoint that last
//!   answered first, then the others in order.
//!
//! ```no_run
//! # async fn demo() -> Result<(), memhub_client::ClientError> {
//! let hub = memhub_client::Client::new(&["http://10.0.0.5:8682", "http://10.0.0.6:8682"])?.api_key("mh_...");
//! let found = hub.search(&memhub_types::SearchRequest { query: "deploy".into(), ..Default::default() }).await?;
//! # Ok(()) }
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use memhub_types::{Memory, NewMemory, SearchRequest, SearchResponse};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// An endpoint is not an absolute http(s) URL.
    #[error("invalid hub URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// The hub answered with an error (after retries, for retryable ones).
    #[error("{endpoint} answered {status}: {code}: {message}{}", field.as_deref().map(|f| format!(" (field {f})")).unwrap_or_default())]
    Api { endpoint: String, status: u16, code: String, message: String, field: Option<String> },
    /// No endpoint could be reached (after retries).
    #[error("no hub endpoint answered after {attempts} attempts; last error: {last}")]
    Unreachable { attempts: u32, last: String },
    /// The answer was not what the hub's API promises.
    #[error("unexpected answer from {endpoint}: {reason}")]
    Decode { endpoint: String, reason: String },
    /// An MCP tool reported a failure (`isError`).
    #[error("tool {tool} failed: {result}")]
    Tool { tool: String, result: Value },
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Rounds over all endpoints, the first included.
    pub attempts: u32,
    /// The first backoff; doubles each round.
    pub base: Duration,
    /// The longest backoff.
    pub max: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            base: Duration::from_millis(200),
            max: Duration::from_secs(10),
            timeout: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The wait before round `round` (1-based, after a failed round): a uniformly
    /// random duration up to `base * 2^(round-1)`, capped at `max` ("full jitter",
    /// so many clients retrying together spread out).
    pub fn backoff(&self, round: u32) -> Duration {
        let ceiling = self.base.saturating_mul(1u32 << round.saturating_sub(1).min(20)).min(self.max);
        ceiling.mul_f64(random_unit())
    }
}

/// A number in [0, 1) from the standard library's per-process random hash keys.
fn random_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// A batch write's result: `POST /v1/memories/batch` and the
/// `batch_store_memories` tool (the Akosha contract, which has no `results`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchResult {
    /// `completed`, `partial` or `failed`.
    pub status: String,
    pub total: usize,
    pub stored: usize,
    pub failed: usize,
    #[serde(default)]
    pub errors: Vec<Value>,
    #[serde(default)]
    pub results: Vec<Value>,
}

/// A hub (one or more equivalent endpoints).
#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    endpoints: Vec<Url>,
    api_key: Option<String>,
    retry: RetryPolicy,
    /// The endpoint that answered last: tried first.
    preferred: AtomicUsize,
}

impl Client {
    /// A client for the hub at `endpoints` (`http://host:8682`, tried in order).
    pub fn new(endpoints: &[&str]) -> Result<Client> {
        let invalid = |url: &str, reason: &str| ClientError::InvalidUrl { url: redact(url), reason: reason.into() };
        if endpoints.is_empty() {
            return Err(invalid("", "at least one endpoint is needed"));
        }
        let endpoints = endpoints
            .iter()
            .map(|e| {
                let url = Url::parse(e).map_err(|err| invalid(e, &err.to_string()))?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(invalid(e, "must be http:// or https://"));
                }
                if !url.username().is_empty() || url.password().is_some() {
                    return Err(invalid(e, "put credentials in the API key, not the URL"));
                }
                Ok(url)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Client {
            http: reqwest::Client::new(),
            endpoints,
            api_key: None,
            retry: RetryPolicy::default(),
            preferred: AtomicUsize::new(0),
        })
    }

    /// Send `Authorization: Bearer <key>` (an API key or a JWT).
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// `GET /health`.
    pub async fn health(&self) -> Result<Value> {
        self.request(Method::GET, "health", None).await
    }

    /// `POST /v1/memories/batch`: up to the hub's `max_batch` typed memories in one
    /// durable transaction; invalid items fail alone.
    pub async fn store_batch(&self, memories: &[NewMemory]) -> Result<BatchResult> {
        self.request(Method::POST, "v1/memories/batch", Some(&json!({ "memories": memories }))).await
    }

    /// `POST /v1/search`.
    pub async fn search(&self, req: &SearchRequest) -> Result<SearchResponse> {
        self.request(Method::POST, "v1/search", Some(&serde_json::to_value(req).expect("serializes"))).await
    }

    /// `GET /v1/memories/{id}`.
    pub async fn get(&self, id: uuid::Uuid) -> Result<Memory> {
        self.request(Method::GET, &format!("v1/memories/{id}"), None).await
    }

    /// Call an MCP tool with one stateless JSON-RPC request on `/mcp` (the way
    /// Akosha / Session-Buddy clients do) and return its structured result.
    pub async fn call_tool(&self, name: &str, arguments: Value) -> Result<Value> {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                          "params": {"name": name, "arguments": arguments}});
        let answer: Value = self.request(Method::POST, "mcp", Some(&body)).await?;
        let endpoint = self.endpoints[self.preferred.load(Ordering::Relaxed)].to_string();
        if let Some(err) = answer.get("error") {
            return Err(ClientError::Api {
                endpoint,
                status: 200,
                code: format!("jsonrpc {}", err["code"]),
                message: err["message"].as_str().unwrap_or_default().to_string(),
                field: None,
            });
        }
        let result = &answer["result"];
        let structured = result.get("structuredContent").cloned().or_else(|| {
            // A server that only sends text content: the JSON is its first block.
            result["content"][0]["text"].as_str().and_then(|t| serde_json::from_str(t).ok())
        });
        let Some(structured) = structured else {
            return Err(ClientError::Decode { endpoint, reason: format!("tools/call {name} answered {answer}") });
        };
        if result["isError"] == json!(true) {
            return Err(ClientError::Tool { tool: name.into(), result: structured });
        }
        Ok(structured)
    }

    /// The `batch_store_memories` tool: items are `{memory_id, text, embedding?,
    /// metadata?}` (at most 1000). A `partial` result is not an error: see `errors`.
    pub async fn batch_store_memories(&self, items: &[Value]) -> Result<BatchResult> {
        let out = match self.call_tool("batch_store_memories", json!({ "memories": items })).await {
            Err(ClientError::Tool { result, .. }) => result,
            other => other?,
        };
        serde_json::from_value(out.clone()).map_err(|e| ClientError::Decode {
            endpoint: self.endpoints[self.preferred.load(Ordering::Relaxed)].to_string(),
            reason: format!("batch_store_memories: {e}: {out}"),
        })
    }

    /// One request, retried and failed over per the policy.
    async fn request<T: DeserializeOwned>(&self, method: Method, path: &str, body: Option<&Value>) -> Result<T> {
        let n = self.endpoints.len();
        let mut last = String::new();
        for round in 0..self.retry.attempts.max(1) {
            if round > 0 {
                tokio::time::sleep(self.retry.backoff(round)).await;
            }
            let first = self.preferred.load(Ordering::Relaxed);
            for k in 0..n {
                let i = (first + k) % n;
                let base = &self.endpoints[i];
                let url = join(base, path);
                let mut req = self.http.request(method.clone(), url.clone()).timeout(self.retry.timeout);
                if let Some(key) = &self.api_key {
                    req = req.bearer_auth(key);
                }
                if let Some(body) = body {
                    req = req.json(body);
                }
                let resp = match req.send().await {
                    Ok(r) => r,
                    Err(e) => {
                        last = format!("{base}: {}", transport_reason(&e));
                        tracing::debug!(endpoint = %base, error = %last, "hub request failed; trying the next endpoint");
                        continue;
                    }
                };
                let status = resp.status();
                if retryable(status) {
                    last = format!("{base}: HTTP {status}");
                    continue;
                }
                self.preferred.store(i, Ordering::Relaxed);
                let bytes = resp
                    .bytes()
                    .await
                    .map_err(|e| ClientError::Decode { endpoint: base.to_string(), reason: transport_reason(&e) })?;
                if !status.is_success() {
                    return Err(api_error(base, status, &bytes));
                }
                return serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
                    endpoint: base.to_string(),
                    reason: format!("{method} {path}: {e}"),
                });
            }
        }
        Err(ClientError::Unreachable { attempts: self.retry.attempts.max(1) * n as u32, last })
    }
}

/// A URL fit for an error message: without user info.
fn redact(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        Ok(_) => url.to_string(),
        Err(_) if url.contains('@') => "<redacted>".into(),
        Err(_) => url.to_string(),
    }
}

fn join(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    let prefix = url.path().trim_end_matches('/').to_string();
    url.set_path(&format!("{prefix}/{path}"));
    url
}

fn retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 502 | 503 | 504)
}

fn transport_reason(e: &reqwest::Error) -> String {
    if e.is_connect() {
        "connection failed".into()
    } else if e.is_timeout() {
        "timed out".into()
    } else {
        e.to_string()
    }
}

/// The hub's `{"error": {code, message, field}}`, or the raw body.
fn api_error(base: &Url, status: StatusCode, body: &[u8]) -> ClientError {
    let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let e = &parsed["error"];
    let text = |v: &Value| v.as_str().map(String::from);
    ClientError::Api {
        endpoint: base.to_string(),
        status: status.as_u16(),
        code: text(&e["code"]).unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string()),
        message: text(&e["message"]).unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(500)]).into()),
        field: text(&e["field"]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;
    use std::sync::Arc;

    #[test]
    fn backoff_is_jittered_below_a_doubling_ceiling() {
        let p = RetryPolicy { base: Duration::from_millis(100), max: Duration::from_secs(1), ..Default::default() };
        for round in 1..8 {
            let ceiling = Duration::from_millis(100 * (1 << (round - 1))).min(Duration::from_secs(1));
            let waits: Vec<Duration> = (0..50).map(|_| p.backoff(round)).collect();
            assert!(waits.iter().all(|w| *w <= ceiling), "round {round}: {waits:?}");
            let distinct: std::collections::HashSet<_> = waits.iter().collect();
            assert!(distinct.len() > 40, "jitter spreads the waits: {distinct:?}");
        }
    }

    #[test]
    fn bad_endpoints_are_refused() {
        for bad in ["ftp://x", "not a url", "http://user:secret@host:8682"] {
            let err = Client::new(&[bad]).unwrap_err().to_string();
            assert!(err.starts_with("invalid hub URL"), "{err}");
            assert!(!err.contains("secret"), "credentials never reach errors: {err}");
        }
        assert!(Client::new(&[]).is_err());
    }

    /// A stub hub: answers 503 to the first `flaky` requests, then 200 with a body.
    async fn stub(flaky: u32) -> (String, Arc<AtomicU32>) {
        let hits = Arc::new(AtomicU32::new(0));
        let seen = hits.clone();
        let app = axum::Router::new().route(
            "/health",
            axum::routing::get(move || {
                let seen = seen.clone();
                async move {
                    if seen.fetch_add(1, Ordering::SeqCst) < flaky {
                        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "busy").into_response()
                    } else {
                        axum::Json(json!({"status": "ok"})).into_response()
                    }
                }
            }),
        );
        use axum::response::IntoResponse;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (url, hits)
    }

    fn fast() -> RetryPolicy {
        RetryPolicy {
            attempts: 4,
            base: Duration::from_millis(5),
            max: Duration::from_millis(20),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn retries_a_busy_hub_then_succeeds() {
        let (url, hits) = stub(2).await;
        let client = Client::new(&[&url]).unwrap().retry(fast());
        assert_eq!(client.health().await.unwrap()["status"], "ok");
        assert_eq!(hits.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn falls_back_to_the_next_endpoint_and_stays_there() {
        // Port 9 on loopback: nothing listens, the connection is refused.
        let (url, hits) = stub(0).await;
        let client = Client::new(&["http://127.0.0.1:9", &url]).unwrap().retry(fast());
        client.health().await.unwrap();
        client.health().await.unwrap();
        assert_eq!(hits.load(Ordering::SeqCst), 2);
        assert_eq!(client.preferred.load(Ordering::SeqCst), 1, "the answering endpoint is tried first next time");
    }

    #[tokio::test]
    async fn gives_up_after_the_policy_s_attempts_naming_the_last_error() {
        let client = Client::new(&["http://127.0.0.1:9"]).unwrap().retry(fast());
        match client.health().await.unwrap_err() {
            ClientError::Unreachable { attempts, last } => {
                assert_eq!(attempts, 4);
                assert!(last.contains("connection failed"), "{last}");
            }
            other => panic!("{other}"),
        }
    }
}
