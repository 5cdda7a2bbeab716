//! The REST API (`/v1/...`) and its Memory V2 aliases. Handlers are thin: parse,
//! call the engine on a blocking thread, shape the answer. Errors map once, in
//! [`ApiError`](crate::http::ApiError).

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use memhub_engine::Stored;
use memhub_types::memory::IngestionMethod;
use memhub_types::time::{format_micros, now_micros, parse_timestamp};
use memhub_types::{
    Error, ErrorCode, KindSchema, Memory, MemoryFilter, MemoryPatch, NewMemory, SearchRequest, SearchResponse,
};
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::{AuditNote, Caller};
use crate::http::{blocking, decode_json, decode_slice, read_body, ApiError, ApiJson, ApiQuery, ApiResult};
use crate::AppState;
use memhub_govern::Permission;

fn parse_id(id: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(id)
        .map_err(|_| ApiError(Error::field(ErrorCode::InvalidField, "id", format!("{id:?} is not a memory id (UUID)"))))
}

fn public(mut m: Memory, include_embedding: bool) -> Memory {
    if !include_embedding {
        m.embedding = None;
    }
    m
}

/// The answer to a store: what happened and the memory as stored.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct StoreResponse {
    /// `created`, `updated` or `unchanged`.
    pub status: memhub_types::StoreOutcome,
    pub memory: Memory,
}

fn store_response(s: Stored) -> (StatusCode, Json<StoreResponse>) {
    let status = if s.outcome == memhub_types::StoreOutcome::Created { StatusCode::CREATED } else { StatusCode::OK };
    (status, Json(StoreResponse { status: s.outcome, memory: public(s.memory, false) }))
}

/// Store one memory.
#[utoipa::path(post, path = "/v1/memories", request_body = NewMemory,
    responses((status = 201, body = StoreResponse, description = "created"), (status = 200, body = StoreResponse, description = "updated or unchanged"),
              (status = 400, description = "invalid field"), (status = 413, description = "too large"), (status = 422, description = "schema validation failed")))]
pub async fn create_memory(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(new): ApiJson<NewMemory>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Write)?;
    let engine = state.engine.clone();
    let stored = blocking(move || engine.store_memory(&caller.access.write, new, IngestionMethod::Rest)).await?;
    Ok((AuditNote::targets(vec![stored.memory.id.to_string()]), store_response(stored)))
}

/// A batch of memories.
#[derive(Debug, Deserialize, ToSchema)]
pub struct BatchRequest {
    /// Up to 1000 memories; each is validated on its own.
    #[schema(value_type = Vec<NewMemory>)]
    pub memories: Vec<Value>,
}

/// Store up to 1000 memories in one durable transaction; invalid items are reported, not stored.
#[utoipa::path(post, path = "/v1/memories/batch", request_body = BatchRequest,
    responses((status = 200, description = "{status, total, stored, failed, errors[], results[], stored_at}"), (status = 413, description = "batch too large")))]
pub async fn create_batch(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    req: Request,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Write)?;
    let (parts, body) = req.into_parts();
    let bytes = read_body(&parts.headers, body, state.config.max_body_bytes).await?;
    // Fast path: every item is a valid `NewMemory`. Otherwise parse item by item so
    // one bad item is reported without refusing the others.
    #[derive(Deserialize)]
    struct TypedBatch {
        memories: Vec<NewMemory>,
    }
    let parsed: Vec<Result<NewMemory, Error>> = match serde_json::from_slice::<TypedBatch>(&bytes) {
        Ok(batch) => batch.memories.into_iter().map(Ok).collect(),
        Err(_) => {
            let batch: BatchRequest = decode_slice(&bytes)?;
            batch
                .memories
                .into_iter()
                .enumerate()
                .map(|(i, item)| decode_json::<NewMemory>(item).map_err(|e| e.within(&format!("memories[{i}]"))))
                .collect()
        }
    };
    let max = state.engine.config().max_batch;
    let total = parsed.len();
    if total > max {
        return Err(ApiError(Error::field(
            ErrorCode::BatchTooLarge,
            "memories",
            format!("Batch size exceeds maximum of {max} memories (got {total})"),
        )));
    }
    let engine = state.engine.clone();
    let (results, parse_errors) = blocking(move || {
        let mut news = Vec::new();
        let mut positions = Vec::new();
        let mut parse_errors = Vec::new();
        for (i, item) in parsed.into_iter().enumerate() {
            match item {
                Ok(n) => {
                    news.push(n);
                    positions.push(i);
                }
                Err(e) => parse_errors.push((i, e)),
            }
        }
        let results = engine.store_batch(&caller.access.write, news, IngestionMethod::Rest)?;
        Ok((positions.into_iter().zip(results).collect::<Vec<_>>(), parse_errors))
    })
    .await?;
    let mut errors: Vec<(usize, Value)> = parse_errors
        .into_iter()
        .map(|(i, e)| (i, json!({"index": i, "memory_id": null, "code": e.code.as_str(), "error": e.message()})))
        .collect();
    let mut items = Vec::new();
    let mut targets = Vec::new();
    for (i, r) in results {
        match r {
            Ok(s) => {
                targets.push(s.memory.id.to_string());
                items.push(json!({"index": i, "id": s.memory.id, "memory_id": s.memory.memory_id, "status": s.outcome}))
            }
            Err(e) => {
                let e = e.within(&format!("memories[{i}]"));
                errors.push((i, json!({"index": i, "code": e.code.as_str(), "error": e.message()})))
            }
        }
    }
    errors.sort_by_key(|(i, _)| *i);
    let (stored, failed) = (items.len(), errors.len());
    let status = if failed == 0 {
        "completed"
    } else if stored > 0 {
        "partial"
    } else {
        "failed"
    };
    Ok((
        AuditNote::targets(targets),
        Json(json!({
            "status": status, "total": total, "stored": stored, "failed": failed,
            "errors": errors.into_iter().map(|(_, e)| e).collect::<Vec<_>>(),
            "results": items, "stored_at": format_micros(now_micros()),
        })),
    ))
}

/// Options for reading a memory.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GetQuery {
    /// Include the embedding vector.
    #[serde(default)]
    pub include_embedding: bool,
}

/// Fetch one memory.
#[utoipa::path(get, path = "/v1/memories/{id}", params(("id" = String, Path, description = "server id"), GetQuery),
    responses((status = 200, body = Memory), (status = 404, description = "memory_not_found")))]
pub async fn get_memory(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<GetQuery>,
) -> ApiResult<Json<Memory>> {
    caller.require(Permission::Read)?;
    let id = parse_id(&id)?;
    let engine = state.engine.clone();
    let m = blocking(move || engine.get(&caller.access.read, &id)).await?;
    Ok(Json(public(m, q.include_embedding)))
}

/// Change some fields of a memory: a new version, the old one kept in history.
#[utoipa::path(patch, path = "/v1/memories/{id}", request_body = MemoryPatch, params(("id" = String, Path)),
    responses((status = 200, body = StoreResponse), (status = 404, description = "memory_not_found")))]
pub async fn patch_memory(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<MemoryPatch>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Change)?;
    let id = parse_id(&id)?;
    let engine = state.engine.clone();
    let stored = blocking(move || engine.update(&caller.access, &id, patch)).await?;
    Ok((StatusCode::OK, Json(StoreResponse { status: stored.outcome, memory: public(stored.memory, false) })))
}

/// Delete a memory and its history.
#[utoipa::path(delete, path = "/v1/memories/{id}", params(("id" = String, Path)),
    responses((status = 200, description = "{status: deleted, id}"), (status = 404, description = "memory_not_found")))]
pub async fn delete_memory(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require(Permission::Change)?;
    let id = parse_id(&id)?;
    let engine = state.engine.clone();
    let m = blocking(move || engine.delete(&caller.access, &id)).await?;
    Ok(Json(json!({"status": "deleted", "id": m.id, "memory_id": m.memory_id, "system_id": m.system_id})))
}

/// Every version of a memory, newest first.
#[utoipa::path(get, path = "/v1/memories/{id}/history", params(("id" = String, Path)),
    responses((status = 200, description = "{id, versions: [Memory]}"), (status = 404, description = "memory_not_found")))]
pub async fn memory_history(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require(Permission::Read)?;
    let id = parse_id(&id)?;
    let engine = state.engine.clone();
    let versions = blocking(move || engine.history(&caller.access.read, &id)).await?;
    let versions: Vec<Memory> = versions.into_iter().map(|m| public(m, false)).collect();
    Ok(Json(json!({"id": id, "versions": versions})))
}

/// Filters for `GET /v1/memories` (tags comma-separated).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    pub system_id: Option<String>,
    pub kind: Option<String>,
    pub user_id: Option<String>,
    pub agent_id: Option<String>,
    pub session_id: Option<String>,
    pub project: Option<String>,
    /// Comma-separated: any of these tags.
    pub tags: Option<String>,
    /// Comma-separated: all of these tags.
    pub tags_all: Option<String>,
    /// ISO-8601.
    pub since: Option<String>,
    /// ISO-8601.
    pub until: Option<String>,
    #[serde(default, deserialize_with = "memhub_types::memory::whole::option")]
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

pub(crate) fn time_param(name: &str, v: Option<String>) -> ApiResult<Option<i64>> {
    v.map(|s| {
        parse_timestamp(&s).ok_or_else(|| {
            ApiError(Error::field(ErrorCode::InvalidField, name, format!("{s:?} is not an ISO-8601 time")))
        })
    })
    .transpose()
}

fn split_tags(v: Option<String>) -> Vec<String> {
    v.map(|s| s.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned).collect()).unwrap_or_default()
}

/// The answer to a listing.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct ListResponse {
    pub memories: Vec<Memory>,
    pub next_cursor: Option<String>,
}

/// List memories newest first, filtered, one page at a time.
#[utoipa::path(get, path = "/v1/memories", params(ListQuery), responses((status = 200, body = ListResponse), (status = 400, description = "invalid filter or cursor")))]
pub async fn list_memories(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Read)?;
    let filter = MemoryFilter {
        system_id: q.system_id,
        kind: q.kind,
        user_id: q.user_id,
        agent_id: q.agent_id,
        session_id: q.session_id,
        project: q.project,
        tags: split_tags(q.tags),
        tags_all: split_tags(q.tags_all),
        since: time_param("since", q.since)?,
        until: time_param("until", q.until)?,
        metadata: None,
    };
    let audit = AuditNote::filters(&filter);
    let engine = state.engine.clone();
    let page = blocking(move || engine.list(&caller.access.read, &filter, q.limit, q.cursor.as_deref())).await?;
    Ok((audit, Json(ListResponse { memories: page.memories, next_cursor: page.next_cursor })))
}

/// Hybrid search within filters.
#[utoipa::path(post, path = "/v1/search", request_body = SearchRequest, responses((status = 200, body = SearchResponse), (status = 400, description = "invalid request")))]
pub async fn search(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<SearchRequest>,
) -> ApiResult<(Extension<AuditNote>, Json<SearchResponse>)> {
    caller.require(Permission::Read)?;
    let audit = AuditNote::filters(&req.filter);
    let engine = state.engine.clone();
    Ok((audit, Json(blocking(move || engine.search(&caller.access.read, &req)).await?)))
}

/// A schema registration.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterSchema {
    pub kind: String,
    /// Defaults to the next version of the kind.
    #[serde(default, deserialize_with = "memhub_types::memory::whole::option")]
    pub version: Option<u32>,
    #[serde(default)]
    pub description: String,
    /// A JSON Schema for the kind's `attributes`.
    #[schema(value_type = Object)]
    pub schema: Value,
}

/// The registered kinds and versions.
#[utoipa::path(get, path = "/v1/schemas", responses((status = 200, description = "{schemas: [KindSchema]}")))]
pub async fn list_schemas(State(state): State<AppState>) -> Json<Value> {
    let schemas: Vec<KindSchema> = state.engine.schemas();
    Json(json!({ "schemas": schemas }))
}

/// Register a new kind, or a new version of a kind. Old versions stay valid.
#[utoipa::path(post, path = "/v1/schemas", request_body = RegisterSchema,
    responses((status = 201, body = KindSchema), (status = 200, body = KindSchema, description = "identical version existed"), (status = 409, description = "schema_version_exists")))]
pub async fn register_schema(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(r): ApiJson<RegisterSchema>,
) -> ApiResult<impl IntoResponse> {
    caller.require(Permission::Administer)?;
    let engine = state.engine.clone();
    let (schema, is_new) =
        blocking(move || engine.register_schema(&r.kind, r.version, r.description, r.schema)).await?;
    Ok((if is_new { StatusCode::CREATED } else { StatusCode::OK }, Json(schema)))
}

/// Counts per kind and system, history size, store size.
#[utoipa::path(get, path = "/v1/stats", responses((status = 200, description = "counts")))]
pub async fn stats(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> ApiResult<Json<Value>> {
    caller.require(Permission::Read)?;
    let engine = state.engine.clone();
    let s = blocking(move || engine.stats(&caller.access.read)).await?;
    Ok(Json(serde_json::to_value(s).map_err(Error::internal)?))
}

/// Memory V2 `retrieve`: by `id`, by `memory_id` (+`system_id`), or a filtered page.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RetrieveRequest {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub memory_id: Option<String>,
    #[serde(default, deserialize_with = "memhub_types::memory::whole::option")]
    pub limit: Option<usize>,
    #[serde(default)]
    pub cursor: Option<String>,
    #[serde(flatten)]
    pub filter: MemoryFilter,
}

/// Retrieve by id or by filters (Memory V2).
#[utoipa::path(post, path = "/memory/retrieve", request_body = RetrieveRequest, responses((status = 200, description = "{memory} or {memories, next_cursor}"), (status = 404, description = "memory_not_found")))]
pub async fn retrieve(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(r): ApiJson<RetrieveRequest>,
) -> ApiResult<Json<Value>> {
    caller.require(Permission::Read)?;
    let tenant = caller.access.read;
    let engine = state.engine.clone();
    let out = blocking(move || {
        if let Some(id) = &r.id {
            let id = Uuid::parse_str(id).map_err(|_| Error::field(ErrorCode::InvalidField, "id", "not a UUID"))?;
            return Ok(json!({"memory": public(engine.get(&tenant, &id)?, false)}));
        }
        if let Some(mid) = &r.memory_id {
            return Ok(
                json!({"memory": public(engine.get_by_memory_id(&tenant, r.filter.system_id.as_deref(), mid)?, false)}),
            );
        }
        let page = engine.list(&tenant, &r.filter, r.limit, r.cursor.as_deref())?;
        Ok(json!({"memories": page.memories, "next_cursor": page.next_cursor}))
    })
    .await?;
    Ok(Json(out))
}

/// `GET /healthz`.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /status` and `/mcp/status`.
pub async fn status(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "status": "ok", "service": "memhub", "version": env!("CARGO_PKG_VERSION"),
        "transport": "streamable-http", "mcp_endpoint": "/mcp",
        "embedding_dim": state.engine.config().embedding_dim,
    }))
}

/// `POST /mcp/store_memory`: the raw Akosha push, `{id|memory_id, text, embedding, metadata}`.
pub async fn raw_store_memory(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<Value>,
) -> Response {
    let Value::Object(args) = body else {
        return ApiError(Error::new(ErrorCode::InvalidField, "the body must be a JSON object")).into_response();
    };
    // The request's own audit record covers this call.
    match crate::tools::run_tool(&state.tools(caller), "store_memory", args).await {
        Ok(out) => Json(out.value).into_response(),
        Err(unknown) => {
            ApiError(Error::internal(format!("tool {:?} is missing from the catalogue", unknown.0))).into_response()
        }
    }
}
