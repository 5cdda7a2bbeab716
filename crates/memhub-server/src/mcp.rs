//! MCP: the rmcp server handler (streamable HTTP at `/mcp`, and stdio), plus the
//! compatibility paths real clients use today:
//!
//! - a bare `POST /mcp` body `{"method":"tools/call","params":{...}}` (no `jsonrpc`)
//!   answers with the tool's result object itself;
//! - a JSON-RPC 2.0 `tools/call` with no session and no `Accept: text/event-stream`
//!   answers with one JSON-RPC response whose `result` carries the tool's keys at top
//!   level plus `content` and `structuredContent`;
//! - everything else (initialize, sessions, SSE) goes to rmcp unchanged.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, Request};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use http_body_util::Full;
use memhub_engine::Engine;
use memhub_types::{Error, ErrorCode};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler, ServiceExt};
use serde_json::{json, Map, Value};

use crate::auth::Caller;
use crate::http::{read_body, ApiError};
use crate::tools::{call_tool, tools, ToolContext, ToolOutput};
use crate::AppState;
use memhub_govern::AuditLog;

/// The rmcp handler: lists the catalogue and dispatches calls as the request's
/// caller (over HTTP, set by the auth guard) or as the local principal (stdio).
#[derive(Clone)]
pub struct McpHandler {
    engine: Arc<Engine>,
    audit: Arc<AuditLog>,
    local: Option<Caller>,
    tools: Arc<Vec<Tool>>,
}

impl McpHandler {
    pub fn new(engine: Arc<Engine>, audit: Arc<AuditLog>, local: Option<Caller>) -> Self {
        let tools = tools()
            .iter()
            .map(|s| {
                let schema = s.input_schema.as_object().cloned().unwrap_or_default();
                Tool::new(s.name, s.description, Arc::new(schema))
            })
            .collect();
        McpHandler { engine, audit, local, tools: Arc::new(tools) }
    }
}

fn to_call_result(out: ToolOutput) -> CallToolResult {
    if out.is_error {
        CallToolResult::structured_error(out.value)
    } else {
        CallToolResult::structured(out.value)
    }
}

impl ServerHandler for McpHandler {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("memhub", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "memhub is a memory hub: store memories with store_memory / batch_store_memories, \
                 find them with search_memories (filters: system_id, kind, user, session, project, tags, time) \
                 or search_all_systems, and page through them with list_memories.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(self.tools.as_ref().clone()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.tools.iter().find(|t| t.name == name).cloned()
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let args = request.arguments.unwrap_or_default();
        let from_http =
            context.extensions.get::<axum::http::request::Parts>().and_then(|p| p.extensions.get::<Caller>());
        let Some(caller) = from_http.or(self.local.as_ref()).cloned() else {
            return Err(McpError::invalid_request("no authenticated caller for this request", None));
        };
        let ctx = ToolContext { engine: self.engine.clone(), caller, audit: Some(self.audit.clone()) };
        match call_tool(&ctx, &request.name, args).await {
            Ok(out) => Ok(CallToolResponse::Complete(to_call_result(out))),
            Err(unknown) => Err(McpError::invalid_params(format!("unknown tool {:?}", unknown.0), None)),
        }
    }
}

/// The rmcp streamable HTTP service for `/mcp`.
pub type McpService = StreamableHttpService<McpHandler, LocalSessionManager>;

/// Build the streamable HTTP service.
pub fn http_service(
    engine: Arc<Engine>,
    audit: Arc<AuditLog>,
    allowed_hosts: &[String],
    max_body: usize,
) -> McpService {
    let mut config = StreamableHttpServerConfig::default().with_max_request_body_bytes(max_body);
    config = if allowed_hosts.iter().any(|h| h == "*") {
        config.disable_allowed_hosts()
    } else {
        config.with_allowed_hosts(allowed_hosts.iter().cloned())
    };
    StreamableHttpService::new(
        move || Ok(McpHandler::new(engine.clone(), audit.clone(), None)),
        Arc::new(LocalSessionManager::default()),
        config,
    )
}

/// Serve MCP over stdin/stdout as `caller` until the client closes it.
pub async fn serve_stdio(
    engine: Arc<Engine>,
    audit: Arc<AuditLog>,
    caller: Caller,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let service = McpHandler::new(engine, audit, Some(caller)).serve(rmcp::transport::stdio()).await?;
    service.waiting().await?;
    Ok(())
}

fn wants_sse(headers: &HeaderMap) -> bool {
    headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).any(|v| v.contains("text/event-stream"))
}

/// The tool result as the compatibility JSON-RPC answer expects it: the tool's keys
/// at top level, plus `content` and `structuredContent`.
fn flattened_result(out: &ToolOutput) -> Value {
    let mut result = match &out.value {
        Value::Object(m) => m.clone(),
        other => Map::from_iter([("value".to_string(), other.clone())]),
    };
    result.insert("content".into(), json!([ContentBlock::text(out.value.to_string())]));
    result.insert("structuredContent".into(), out.value.clone());
    result.insert("isError".into(), json!(out.is_error));
    Value::Object(result)
}

fn tools_list_value() -> Value {
    let tools: Vec<Value> = tools()
        .iter()
        .map(|s| json!({"name": s.name, "description": s.description, "inputSchema": s.input_schema}))
        .collect();
    json!({ "tools": tools })
}

fn call_params(body: &Value) -> Result<(String, Map<String, Value>), Error> {
    let params = body.get("params").cloned().unwrap_or(Value::Null);
    let name = params
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::field(ErrorCode::InvalidField, "params.name", "the tool name is required"))?
        .to_string();
    let args = match params.get("arguments") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(Error::field(ErrorCode::InvalidField, "params.arguments", "must be an object")),
    };
    Ok((name, args))
}

/// `POST/GET/DELETE /mcp` (and `/mcp/mcp/v1`): the compatibility paths first, then rmcp.
pub async fn mcp_endpoint(State(state): State<AppState>, req: Request<Body>) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = match read_body(&parts.headers, body, state.config.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    if parts.method != Method::POST {
        return forward(&state, parts, bytes).await;
    }
    let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
    let has_session = parts.headers.contains_key("mcp-session-id");
    let caller = parts.extensions.get::<Caller>().cloned();
    if let (Some(body), Some(caller)) = (parsed.as_ref().filter(|b| b.is_object()), caller) {
        let ctx = state.tools(caller);
        let method = body.get("method").and_then(Value::as_str).unwrap_or("");
        let is_jsonrpc = body.get("jsonrpc").is_some();
        if !is_jsonrpc && matches!(method, "tools/call" | "tools/list") {
            return bare_call(&ctx, method, body).await;
        }
        if is_jsonrpc && !has_session && !wants_sse(&parts.headers) && matches!(method, "tools/call" | "tools/list") {
            if let Some(id) = body.get("id").cloned() {
                return stateless_jsonrpc(&ctx, method, id, body).await;
            }
        }
    }
    forward(&state, parts, bytes).await
}

async fn bare_call(ctx: &ToolContext, method: &str, body: &Value) -> Response {
    if method == "tools/list" {
        return Json(tools_list_value()).into_response();
    }
    let (name, args) = match call_params(body) {
        Ok(p) => p,
        Err(e) => return ApiError(e).into_response(),
    };
    match call_tool(ctx, &name, args).await {
        Ok(out) => Json(out.value).into_response(),
        Err(unknown) => {
            ApiError(Error::new(ErrorCode::NotFound, format!("unknown tool {:?}", unknown.0))).into_response()
        }
    }
}

async fn stateless_jsonrpc(ctx: &ToolContext, method: &str, id: Value, body: &Value) -> Response {
    let rpc_error = |code: i64, message: String| {
        Json(json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})).into_response()
    };
    if method == "tools/list" {
        return Json(json!({"jsonrpc": "2.0", "id": id, "result": tools_list_value()})).into_response();
    }
    let (name, args) = match call_params(body) {
        Ok(p) => p,
        Err(e) => return rpc_error(-32602, e.message()),
    };
    match call_tool(ctx, &name, args).await {
        Ok(out) => Json(json!({"jsonrpc": "2.0", "id": id, "result": flattened_result(&out)})).into_response(),
        Err(unknown) => rpc_error(-32602, format!("unknown tool {:?}", unknown.0)),
    }
}

/// Hand a request whose body is already read to rmcp.
async fn forward(state: &AppState, parts: axum::http::request::Parts, bytes: Bytes) -> Response {
    use tower::ServiceExt as _;
    let req = Request::from_parts(parts, Full::<Bytes>::new(bytes));
    match state.mcp.clone().oneshot(req).await {
        Ok(resp) => resp.map(Body::new),
        Err(never) => match never {},
    }
}
