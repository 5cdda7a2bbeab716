//! Governance routes: API keys, retention, erasure, the audit log, and export.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use memhub_govern::{AuditQuery, NewKey, Permission, Role};
use memhub_types::time::{format_micros, now_micros, parse_duration_seconds};
use memhub_types::{Error, ErrorCode, MemoryFilter, RetentionPolicy, Scope};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::{AuditNote, Caller};
use crate::http::{ApiJson, ApiQuery, ApiResult};
use crate::rest::time_param;
use std::sync::Arc;

use crate::http::blocking;
use crate::AppState;

/// A key to create (`POST /v1/keys`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    pub role: String,
    /// Defaults to the caller's tenant; another tenant needs a superadmin.
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub systems: Option<Vec<String>>,
    #[serde(default)]
    pub kinds: Option<Vec<String>>,
    /// A duration such as `"30d"`.
    #[serde(default)]
    pub expires_in: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    /// Lets a service key read within its systems.
    #[serde(default)]
    pub read: bool,
    #[serde(default)]
    pub superadmin: bool,
}

/// Parse `"30d"`-style durations into an expiry time.
pub fn expiry(expires_in: Option<&str>) -> Result<Option<i64>, Error> {
    expires_in
        .map(|d| {
            parse_duration_seconds(d).filter(|s| *s >= 1.0).map(|s| now_micros() + (s * 1e6) as i64).ok_or_else(|| {
                Error::field(ErrorCode::InvalidField, "expires_in", format!("{d:?} is not a duration like 30d or 12h"))
            })
        })
        .transpose()
}

/// Create an API key (admin). The secret is in this answer only.
pub async fn create_key(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(k): ApiJson<CreateKey>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Administer)?;
    let role: Role = k.role.parse().map_err(|e: String| Error::field(ErrorCode::InvalidField, "role", e))?;
    let tenant = k.tenant.unwrap_or_else(|| caller.tenant.clone());
    if tenant != caller.tenant && !caller.principal.superadmin {
        return Err(Error::forbidden("only a superadmin creates keys in another tenant").into());
    }
    if k.superadmin && !caller.principal.superadmin {
        return Err(Error::forbidden("only a superadmin creates superadmin keys").into());
    }
    let spec = NewKey {
        role,
        tenant,
        user_id: k.user_id,
        systems: k.systems,
        kinds: k.kinds,
        expires_at: expiry(k.expires_in.as_deref())?,
        name: k.name,
        can_read: k.read,
        superadmin: k.superadmin,
    };
    let keys = state.guard.keys.clone();
    let created = blocking(move || keys.create(spec)).await?;
    Ok((StatusCode::CREATED, AuditNote::targets(vec![created.key.id.clone()]), Json(created)))
}

/// The tenant's keys (admin), without secrets.
pub async fn list_keys(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> ApiResult<Json<Value>> {
    caller.require(Permission::Administer)?;
    let keys = state.guard.keys.clone();
    let list = blocking(move || keys.list(Some(&caller.tenant))).await?;
    Ok(Json(json!({ "keys": list })))
}

/// Revoke a key of the tenant (admin).
pub async fn revoke_key(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require(Permission::Administer)?;
    let keys = state.guard.keys.clone();
    let key = blocking(move || keys.revoke(&id, Some(&caller.tenant))).await?;
    Ok(Json(json!({"status": "revoked", "key": key})))
}

/// The retention policies that apply in the caller's tenant.
pub async fn get_retention(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Value>> {
    caller.require(Permission::Read)?;
    Ok(Json(json!({ "policies": state.engine.retention(&caller.tenant) })))
}

/// `PUT /v1/retention` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetRetention {
    pub policies: Vec<RetentionPolicy>,
}

/// Replace the tenant's own retention policies (admin). Takes effect at once.
pub async fn set_retention(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<SetRetention>,
) -> ApiResult<Json<Value>> {
    caller.require(Permission::Administer)?;
    let engine = state.engine.clone();
    let tenant = caller.tenant.clone();
    let policies = body.policies.into_iter().map(|p| RetentionPolicy { tenant: Some(tenant.clone()), ..p }).collect();
    let now = blocking(move || engine.set_retention(&tenant, policies)).await?;
    Ok(Json(json!({ "policies": now })))
}

/// `POST /v1/erase` body: at least one criterion, or `all`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EraseRequest {
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub system_id: Option<String>,
    #[serde(default)]
    pub filter: Option<MemoryFilter>,
    /// Erase the whole tenant.
    #[serde(default)]
    pub all: bool,
}

/// Erase every matching memory and its history for real, then compact (admin).
pub async fn erase(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(r): ApiJson<EraseRequest>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Administer)?;
    let mut filter = r.filter.unwrap_or_default();
    if let Some(u) = r.user_id {
        filter.user_id = Some(u);
    }
    if let Some(s) = r.system_id {
        filter.system_id = Some(s);
    }
    if filter == MemoryFilter::default() && !r.all {
        return Err(Error::field(
            ErrorCode::InvalidField,
            "user_id",
            "name what to erase: user_id, system_id or filter (or all: true for the whole tenant)",
        )
        .into());
    }
    let note = AuditNote::filters(&filter);
    let criteria = note.0.filters.clone();
    let engine = state.engine.clone();
    let scope = Scope::tenant(&caller.tenant);
    let removed = blocking(move || engine.erase(&scope, &filter)).await?;
    Ok((
        note,
        Json(json!({
            "status": "erased",
            "tenant": caller.tenant,
            "criteria": criteria,
            "memories": removed.memories,
            "history_versions": removed.history_versions,
            "erased_at": format_micros(now_micros()),
            "request_id": caller.request_id,
        })),
    ))
}

/// Run the tier aging job now (admin): move memories past their tier boundary,
/// sweep orphaned cold objects. The job also runs every `engine.tiers.interval_seconds`.
pub async fn run_tiers(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Administer)?;
    let engine = state.engine.clone();
    let report = blocking(move || engine.age_tiers()).await?;
    Ok(Json(report))
}

/// The pull worker, or a 404 naming the setting that enables it.
fn pull_worker(state: &AppState) -> Result<Arc<memhub_ingest::PullWorker>, Error> {
    state.ingest.clone().ok_or_else(|| {
        Error::new(
            ErrorCode::NotFound,
            "the pull ingestion worker is off: set [ingest.bucket] url (or MEMHUB_INGEST_BUCKET)",
        )
    })
}

/// The pull worker's state: last poll, uploads ingested and failed (admin).
pub async fn ingest_status(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Administer)?;
    let worker = pull_worker(&state)?;
    let status = blocking(move || worker.status().map_err(Error::storage)).await?;
    Ok(Json(status))
}

/// Poll the ingest bucket now (admin); the worker also polls every `interval_seconds`.
pub async fn run_ingest(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Administer)?;
    Ok(Json(pull_worker(&state)?.poll().await))
}

/// `GET /v1/audit` parameters.
#[derive(Debug, Default, Deserialize)]
pub struct AuditParams {
    pub since: Option<String>,
    pub until: Option<String>,
    pub actor: Option<String>,
    pub action: Option<String>,
    #[serde(default, deserialize_with = "memhub_types::memory::whole::option")]
    pub limit: Option<usize>,
}

/// The tenant's audit records, newest first (admin).
pub async fn query_audit(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiQuery(p): ApiQuery<AuditParams>,
) -> ApiResult<Json<Value>> {
    caller.require(Permission::Administer)?;
    if p.limit.is_some_and(|l| l == 0 || l > 10_000) {
        return Err(Error::field(ErrorCode::InvalidField, "limit", "must be 1..=10000").into());
    }
    let q = AuditQuery {
        since: time_param("since", p.since)?,
        until: time_param("until", p.until)?,
        actor: p.actor,
        action: p.action,
        tenant: Some(caller.tenant.clone()),
        limit: p.limit,
    };
    let audit = state.guard.audit.clone();
    let records = blocking(move || {
        audit.flush();
        audit.query(&q)
    })
    .await?;
    Ok(Json(json!({ "records": records })))
}

/// Every memory the caller may read, as JSON lines (embeddings included), oldest first.
pub async fn export(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    let engine = state.engine.clone();
    let body = blocking(move || {
        let mut out = Vec::new();
        engine.export_scope(&caller.access.read, |m| {
            serde_json::to_writer(&mut out, &m).map_err(Error::internal)?;
            out.push(b'\n');
            Ok(())
        })?;
        Ok(out)
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body))
}
