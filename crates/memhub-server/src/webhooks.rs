//! `/v1/webhooks`: register, list, enable, disable and remove outgoing webhooks of
//! the caller's tenant, and see or repeat their deliveries (admins only). The
//! delivery itself is `memhub_webhooks`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use memhub_govern::Permission;
use memhub_types::{Error, ErrorCode};
use memhub_webhooks::NewWebhook;
use serde::Deserialize;
use serde_json::json;

use crate::auth::{AuditNote, Caller};
use crate::http::{blocking, ApiJson, ApiQuery, ApiResult};
use crate::AppState;

/// Register a webhook; the answer carries its signing secret, this once.
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(new): ApiJson<NewWebhook>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Administer)?;
    let created = state.webhooks.create(&caller.tenant, new).await?;
    Ok((StatusCode::CREATED, AuditNote::targets(vec![created.webhook.id.clone()]), Json(created)))
}

pub async fn list(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Administer)?;
    let webhooks = state.webhooks.clone();
    let all = blocking(move || webhooks.list(&caller.tenant)).await?;
    Ok(Json(json!({ "webhooks": all })))
}

pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Administer)?;
    let webhooks = state.webhooks.clone();
    let found = blocking(move || webhooks.get(&caller.tenant, &id)).await?;
    Ok((AuditNote::targets(vec![found.id.clone()]), Json(found)))
}

/// `PATCH`: `{enabled: true}` re-enables a disabled webhook (its failure run starts
/// again), `{enabled: false}` pauses it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhook {
    pub enabled: bool,
}

pub async fn update(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(u): ApiJson<UpdateWebhook>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Administer)?;
    let webhooks = state.webhooks.clone();
    let target = AuditNote::targets(vec![id.clone()]);
    let updated = blocking(move || webhooks.set_enabled(&caller.tenant, &id, u.enabled)).await?;
    Ok((target, Json(updated)))
}

pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Administer)?;
    let webhooks = state.webhooks.clone();
    let target = AuditNote::targets(vec![id.clone()]);
    blocking(move || webhooks.delete(&caller.tenant, &id).map(|_| ())).await?;
    Ok((target, Json(json!({"status": "deleted"}))))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveriesQuery {
    #[serde(default, deserialize_with = "memhub_types::memory::whole::option")]
    pub limit: Option<u64>,
}

/// A webhook's delivery attempts, newest first.
pub async fn deliveries(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<DeliveriesQuery>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Administer)?;
    let limit = match q.limit {
        Some(0) => return Err(Error::field(ErrorCode::InvalidField, "limit", "must be at least 1").into()),
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        None => 50,
    };
    let webhooks = state.webhooks.clone();
    let found = blocking(move || webhooks.deliveries(&caller.tenant, &id, limit)).await?;
    Ok(Json(json!({ "deliveries": found })))
}

/// Send an earlier delivery's batch again, now, under its `webhook-id`.
pub async fn redeliver(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((id, delivery)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Administer)?;
    let delivery: i64 = delivery.parse().map_err(|_| {
        Error::field(ErrorCode::InvalidField, "delivery", format!("{delivery:?} is not a delivery id (a number)"))
    })?;
    let done = state.webhooks.redeliver(&caller.tenant, &id, delivery).await?;
    Ok((AuditNote::targets(vec![id]), Json(done)))
}
