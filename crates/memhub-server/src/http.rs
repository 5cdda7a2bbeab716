//! What every HTTP handler shares: the one mapping from the error catalogue to HTTP
//! responses ([`ApiError`]), the JSON body and query extractors that name the bad
//! field, the bounded body reader, and [`blocking`] for engine work. Kept apart from
//! the handlers so that REST, MCP, auth and the tools all depend on it, not on each
//! other.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use memhub_types::{Error, ErrorCode};
use serde::de::DeserializeOwned;

use crate::AppState;

/// The one mapping from the error catalogue to HTTP: status from the code, body
/// `{"error":{"code","type","message","field"}}`.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!(code = %self.0.code, error = %self.0, "request failed");
        }
        (status, Json(self.0.to_json())).into_response()
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// A JSON body whose errors go through the catalogue and name the bad field
/// (`memories[3].embedding`), unlike axum's plain-text rejections.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let bytes = read_body(&parts.headers, body, state.config.max_body_bytes).await?;
        Ok(ApiJson(decode_slice(&bytes)?))
    }
}

/// A query string whose errors go through the catalogue and name the parameter
/// (`invalid_field` on `limit`), unlike axum's plain-text `Query` rejection.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de).map(ApiQuery).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            ApiError(if path == "." {
                Error::new(ErrorCode::InvalidField, format!("invalid query string: {inner}"))
            } else {
                Error::field(ErrorCode::InvalidField, path, inner.to_string())
            })
        })
    }
}

/// Read a request body of at most `limit` bytes. A larger body is still read (and
/// discarded) up to four times the limit before the 413 answer: closing a connection
/// with unread data makes TCP reset it, and the client would see the reset instead
/// of the error.
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: axum::body::Body,
    limit: usize,
) -> Result<axum::body::Bytes, ApiError> {
    use http_body_util::BodyExt;
    let too_large =
        || ApiError(Error::new(ErrorCode::PayloadTooLarge, format!("request body is over the limit of {limit} bytes")));
    let drain_cap = limit.saturating_mul(4);
    let declared = headers.get(axum::http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
    if declared.is_some_and(|n: usize| n > drain_cap) {
        return Err(too_large());
    }
    let mut body = body;
    let mut buf = bytes::BytesMut::with_capacity(declared.unwrap_or(0).min(limit));
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| ApiError(Error::new(ErrorCode::InvalidJson, format!("cannot read the request body: {e}"))))?;
        if let Ok(data) = frame.into_data() {
            total += data.len();
            if total <= limit {
                buf.extend_from_slice(&data);
            } else if total > drain_cap {
                break;
            }
        }
    }
    if total > limit {
        return Err(too_large());
    }
    Ok(buf.freeze())
}

/// Run blocking engine work (SQLite, fsync) off the async runtime.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, Error> + Send + 'static) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(Error::new(ErrorCode::InternalError, format!("internal error: worker failed: {e}"))))
}

/// Deserialize JSON (from bytes or a `Value`) so that an error names the field
/// path (`memories[3].embedding`) and maps into the catalogue.
pub(crate) fn decode_json<'de, T: serde::Deserialize<'de>>(
    de: impl serde::Deserializer<'de, Error = serde_json::Error>,
) -> Result<T, Error> {
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            Error::new(ErrorCode::InvalidJson, format!("invalid JSON body: {inner}"))
        } else if path == "." {
            Error::new(ErrorCode::InvalidField, inner.to_string())
        } else {
            Error::field(ErrorCode::InvalidField, path, inner.to_string())
        }
    })
}

/// Deserialize a JSON body: plain serde on the hot path; on failure, decode again
/// with path tracking so the error names the field.
pub(crate) fn decode_slice<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes).or_else(|_| decode_json(&mut serde_json::Deserializer::from_slice(bytes)))
}

pub(crate) async fn not_found() -> ApiError {
    ApiError(Error::new(ErrorCode::NotFound, "no such route; see /openapi.json"))
}

pub(crate) async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError(Error::new(
        ErrorCode::MethodNotAllowed,
        format!("{} does not take {method}; the Allow header lists the methods it takes", uri.path()),
    ))
}
