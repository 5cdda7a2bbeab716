//! Prometheus metrics on `GET /metrics`: the `metrics` facade's recorder, installed
//! once per process, plus gauges read from the engine at scrape time.
//!
//! Who may scrape: in auth mode `open`, anyone who reaches the (loopback) server;
//! otherwise a superadmin key or JWT, or the scrape token in the environment
//! variable `metrics_token_env` names (a secret that opens `/metrics` and nothing
//! else, so Prometheus never holds a key that can read or erase memories).

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use memhub_types::{Error, Tier};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sha2::Digest;

use crate::auth::Caller;
use crate::http::{blocking, ApiResult};
use crate::AppState;

pub const HTTP_REQUESTS: &str = "memhub_http_requests_total";
pub const HTTP_SECONDS: &str = "memhub_http_request_duration_seconds";
pub const MCP_TOOL_CALLS: &str = "memhub_mcp_tool_calls_total";
pub const MCP_TOOL_SECONDS: &str = "memhub_mcp_tool_duration_seconds";

/// Latency buckets for every `_seconds` histogram: an agent's search is a few
/// milliseconds, a cold scan or a large batch up to seconds.
const BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The process's Prometheus recorder, installed on first use. `None` when another
/// recorder was installed first (an embedding application's own).
pub fn recorder() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
                .map(PrometheusBuilder::build_recorder);
            let recorder = match recorder {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "cannot build the Prometheus recorder; /metrics is off");
                    return None;
                }
            };
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics is off");
                return None;
            }
            describe();
            // Histogram samples wait in per-thread buffers until upkeep folds them into
            // the buckets; without a scraper nothing else would, and they would grow.
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || loop {
                std::thread::sleep(std::time::Duration::from_secs(5));
                upkeep.run_upkeep();
            });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start the metrics upkeep thread");
            }
            Some(handle)
        })
        .as_ref()
}

fn describe() {
    memhub_engine::telemetry::describe();
    memhub_ingest::telemetry::describe();
    metrics::describe_counter!(HTTP_REQUESTS, "HTTP requests, by method, route template and status");
    metrics::describe_histogram!(HTTP_SECONDS, metrics::Unit::Seconds, "HTTP request time, by method and route");
    metrics::describe_counter!(MCP_TOOL_CALLS, "MCP tool calls, by tool and status");
    metrics::describe_histogram!(MCP_TOOL_SECONDS, metrics::Unit::Seconds, "MCP tool call time, by tool");
}

/// Count and time every request by its route template (`/v1/memories/{id}`, never
/// the id itself, so the label set stays bounded).
pub async fn track(req: Request, next: Next) -> Response {
    let started = Instant::now();
    // Any token is a valid HTTP method: only the standard ones become labels.
    let method: &'static str = match req.method().as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "OTHER",
    };
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |m| m.as_str()).to_owned();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!(HTTP_REQUESTS, "method" => method, "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!(HTTP_SECONDS, "method" => method, "route" => route).record(started.elapsed().as_secs_f64());
    resp
}

/// Record one MCP tool call (the tool names are the fixed catalogue).
pub fn tool_call(tool: &str, status: u16, started: Instant) {
    metrics::counter!(MCP_TOOL_CALLS, "tool" => tool.to_owned(), "status" => status.to_string()).increment(1);
    metrics::histogram!(MCP_TOOL_SECONDS, "tool" => tool.to_owned()).record(started.elapsed().as_secs_f64());
}

/// The SHA-256 of a scrape token (only the digest is kept in memory).
pub(crate) fn digest(token: &str) -> [u8; 32] {
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// The scrape token's digest from the environment variable `var`, if set; a token
/// shorter than 16 characters is refused (the server does not start).
pub fn scrape_token(var: &str) -> Result<Option<[u8; 32]>, Error> {
    match std::env::var(var).ok().filter(|t| !t.is_empty()) {
        Some(t) if t.chars().count() < 16 => Err(Error::field(
            memhub_types::ErrorCode::InvalidField,
            "metrics_token_env",
            format!("${var} must be at least 16 characters"),
        )),
        Some(t) => Ok(Some(digest(&t))),
        None => Ok(None),
    }
}

/// Set by the auth guard when a request carried the scrape token.
#[derive(Debug, Clone, Copy)]
pub struct ScrapeToken;

/// `GET /metrics`: the Prometheus text format.
pub async fn metrics_endpoint(
    State(state): State<AppState>,
    token: Option<Extension<ScrapeToken>>,
    caller: Option<Extension<Caller>>,
) -> ApiResult<Response> {
    let allowed = token.is_some() || caller.is_some_and(|c| c.principal.superadmin);
    if !allowed {
        return Err(Error::forbidden(format!(
            "/metrics needs a superadmin key or JWT, or the scrape token in ${}",
            state.config.metrics_token_env
        ))
        .into());
    }
    let Some(handle) = recorder() else {
        return Err(Error::new(
            memhub_types::ErrorCode::InternalError,
            "metrics are off: another metrics recorder was installed in this process",
        )
        .into());
    };
    let engine = state.engine.clone();
    // The ingest gauges are set by each poll (the only time the ledger changes).
    blocking(move || {
        let sizes = engine.indexes().sizes();
        metrics::gauge!("memhub_indexed_memories").set(sizes.memories as f64);
        for (tier, vectors, bytes) in [
            (Tier::Hot, sizes.hot_vectors, sizes.hot_graph_bytes),
            (Tier::Warm, sizes.warm_vectors, sizes.warm_graph_bytes),
        ] {
            metrics::gauge!("memhub_tier_vectors", "tier" => tier.as_str()).set(vectors as f64);
            metrics::gauge!("memhub_tier_bytes", "tier" => tier.as_str()).set(bytes as f64);
        }
        let (cold_memories, cold_bytes) = engine.cold_totals()?;
        metrics::gauge!("memhub_cold_memories").set(cold_memories as f64);
        metrics::gauge!("memhub_tier_bytes", "tier" => Tier::Cold.as_str()).set(cold_bytes as f64);
        metrics::gauge!("memhub_embedding_backlog").set(engine.embedding_backlog() as f64);
        metrics::gauge!("memhub_index_pending_changes").set((sizes.pending_text + sizes.pending_vectors) as f64);
        Ok(())
    })
    .await?;
    handle.run_upkeep();
    let mut resp = handle.render().into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    Ok(resp)
}
