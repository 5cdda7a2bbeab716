//! The OpenAPI 3.1 document served at `/openapi.json`.

use axum::Json;
use utoipa::OpenApi;

use crate::rest;

#[derive(OpenApi)]
#[openapi(
    info(title = "memhub", description = "A self-hosted memory hub for AI agents. MCP tools are served at /mcp."),
    paths(
        rest::create_memory,
        rest::create_batch,
        rest::get_memory,
        rest::patch_memory,
        rest::delete_memory,
        rest::memory_history,
        rest::list_memories,
        rest::search,
        rest::list_schemas,
        rest::register_schema,
        rest::stats,
        rest::retrieve,
        rest::health,
    ),
    components(schemas(
        memhub_types::Memory,
        memhub_types::NewMemory,
        memhub_types::MemoryPatch,
        memhub_types::MemoryFilter,
        memhub_types::SearchRequest,
        memhub_types::SearchResponse,
        memhub_types::SearchHit,
        memhub_types::KindSchema,
        memhub_types::StoreOutcome,
        memhub_types::IngestionMethod,
        rest::StoreResponse,
        rest::BatchRequest,
        rest::ListResponse,
        rest::RegisterSchema,
        rest::RetrieveRequest,
    ))
)]
pub struct ApiDoc;

/// `GET /openapi.json`.
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
