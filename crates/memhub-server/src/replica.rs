//! Read-your-writes across replicas. Every response carries `X-Memhub-Seq`: the
//! last change this replica has applied, so after a write at least the write's
//! own. A request that carries that header (or a `min_seq` query parameter) waits
//! until this replica has applied that change, up to `storage.read_wait_ms`, and is
//! then served; past the bound it is refused with 503 `replica_behind`. On the
//! replica that made the write it holds without asking: a write is published to
//! its own indexes before it is acknowledged.
//!
//! Also `/health`: whether this replica is ready to serve, and how far behind the
//! store's log it is.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use memhub_types::{Error, ErrorCode};
use serde_json::json;

use crate::http::{blocking, ApiError};
use crate::AppState;

/// The header a response tells its replica's applied change in, and a request asks for one.
pub const SEQ_HEADER: &str = "x-memhub-seq";

/// The query parameter that asks for a change, like [`SEQ_HEADER`] (taken out of
/// the query before the handler parses it).
const MIN_SEQ: &str = "min_seq";

/// A replica this many changes or more behind the log reports itself not ready.
pub const READY_BEHIND: i64 = 1_000;

/// Wait for the change the request names, run it, and tell the applied change.
pub async fn read_your_writes(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    match wanted(&mut req) {
        Ok(Some(seq)) => {
            let wait = Duration::from_millis(state.config.storage.read_wait_ms);
            if let Err(e) = applied(&state, seq, wait).await {
                let retry = e.code == ErrorCode::ReplicaBehind;
                let mut resp = ApiError(e).into_response();
                if retry {
                    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(1));
                }
                return resp;
            }
        }
        Ok(None) => {}
        Err(e) => return ApiError(e).into_response(),
    }
    let mut resp = next.run(req).await;
    resp.headers_mut().insert(SEQ_HEADER, HeaderValue::from(state.engine.applied()));
    resp
}

/// The change a request asks to see: the larger of its header and its `min_seq`
/// (which is removed from the query).
fn wanted(req: &mut Request) -> Result<Option<i64>, Error> {
    let parse = |field: &str, v: &str| {
        v.trim().parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            Error::field(ErrorCode::InvalidField, field, "must be a change sequence number (an integer ≥ 0)")
        })
    };
    let mut seq = match req.headers().get(SEQ_HEADER) {
        Some(v) => Some(parse("X-Memhub-Seq", v.to_str().unwrap_or_default())?),
        None => None,
    };
    let Some(query) = req.uri().query().filter(|q| q.contains(MIN_SEQ)) else { return Ok(seq) };
    // Take out the `min_seq` pairs and leave every other byte of the URI as it came.
    let mut rest = Vec::new();
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some((MIN_SEQ, value)) => seq = seq.max(Some(parse(MIN_SEQ, value)?)),
            // `min_seq` without a value: refused, naming it.
            _ if pair == MIN_SEQ => seq = seq.max(Some(parse(MIN_SEQ, "")?)),
            _ => rest.push(pair),
        }
    }
    let path = req.uri().path();
    let path_and_query = if rest.is_empty() { path.to_string() } else { format!("{path}?{}", rest.join("&")) };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query =
        Some(path_and_query.parse().map_err(|e| Error::field(ErrorCode::InvalidField, MIN_SEQ, format!("{e}")))?);
    *req.uri_mut() = axum::http::Uri::from_parts(parts)
        .map_err(|e| Error::field(ErrorCode::InvalidField, MIN_SEQ, format!("{e}")))?;
    Ok(seq)
}

/// Wait until the engine has applied change `seq`, at most `wait`.
async fn applied(state: &AppState, seq: i64, wait: Duration) -> Result<(), Error> {
    let mut published = state.engine.watch_changes();
    if tokio::time::timeout(wait, published.wait_for(|applied| *applied >= seq)).await.is_ok_and(|r| r.is_ok()) {
        return Ok(());
    }
    let engine = state.engine.clone();
    let last = blocking(move || engine.last_change()).await?;
    let applied = state.engine.applied();
    if seq > last {
        return Err(Error::field(
            ErrorCode::InvalidField,
            "X-Memhub-Seq",
            format!("no change {seq} was made: the log ends at {last}"),
        ));
    }
    Err(Error::new(
        ErrorCode::ReplicaBehind,
        format!(
            "this replica has applied changes through {applied}, not yet {seq} (waited {} ms); retry",
            wait.as_millis()
        ),
    ))
}

/// `GET /health`: 200 while this replica is ready (its indexes within
/// [`READY_BEHIND`] changes of the store's log), else 503; the body says how far
/// behind it is either way, and whether it runs the once-per-store jobs (`leader`).
#[utoipa::path(get, path = "/health", responses(
    (status = 200, description = "{status: ok, ready: true, service, version, applied_seq, log_seq, behind, leader}"),
    (status = 503, description = "not ready: the store cannot be reached, or this replica is catching up"),
))]
pub async fn health(State(state): State<AppState>) -> Response {
    let engine = state.engine.clone();
    let applied = engine.applied();
    let (status, body) = match blocking(move || engine.last_change()).await {
        Ok(last) => {
            let behind = (last - applied).max(0);
            let ready = behind < READY_BEHIND;
            (
                if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE },
                json!({
                    "status": if ready { "ok" } else { "catching_up" }, "ready": ready,
                    "service": "memhub", "version": env!("CARGO_PKG_VERSION"),
                    "applied_seq": applied, "log_seq": last, "behind": behind,
                    "leader": state.engine.leading(),
                }),
            )
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({
                "status": "unavailable", "ready": false,
                "service": "memhub", "version": env!("CARGO_PKG_VERSION"),
                "applied_seq": applied, "error": e.to_json()["error"],
            }),
        ),
    };
    (status, Json(body)).into_response()
}
