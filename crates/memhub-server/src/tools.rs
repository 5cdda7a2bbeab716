//! The MCP tool catalogue: names, descriptions and input schemas, and one
//! dispatcher used by every MCP path (rmcp over streamable HTTP, rmcp over stdio,
//! and the bare compatibility POSTs). The argument and result fields of
//! `store_memory`, `batch_store_memories` and `search_all_systems` are the Akosha /
//! Session-Buddy wire contract: do not rename them.

use std::sync::Arc;

use futures::future::BoxFuture;

use memhub_engine::{Engine, Stored};
use memhub_ingest::akosha::{self, AkoshaMemory, KindRule};
use memhub_types::memory::IngestionMethod;
use memhub_types::time::{format_micros, now_micros};
use memhub_types::{Error, ErrorCode, Memory, MemoryFilter, NewEntity, NewMemory, NewRelation, Scope, SearchRequest};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::auth::Caller;
use crate::http::{blocking, decode_json};
use memhub_govern::{AuditLog, Permission};

/// A tool's result: the JSON object (sent as text content and as
/// `structuredContent`) and whether it reports a failure.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolOutput {
    pub value: Value,
    pub is_error: bool,
    /// The HTTP status the same REST call would answer (for the audit log).
    pub status: u16,
}

impl ToolOutput {
    fn ok(value: Value) -> Self {
        ToolOutput { value, is_error: false, status: 200 }
    }

    fn failed(value: Value) -> Self {
        ToolOutput { value, is_error: true, status: 400 }
    }

    /// A failure shaped by the caller, with the status of error `e`.
    fn failed_with(value: Value, e: &Error) -> Self {
        ToolOutput { value, is_error: true, status: e.code.http_status() }
    }

    /// A failure from the error catalogue: `{"status":"failed","error",...}`.
    fn error(e: &Error) -> Self {
        let mut v = json!({"status": "failed", "error": e.message(), "code": e.code.as_str()});
        if let Some(f) = &e.field {
            v["field"] = json!(f);
        }
        ToolOutput::failed_with(v, e)
    }
}

/// Who runs a tool, and where its audit record goes.
#[derive(Clone)]
pub struct ToolContext {
    pub engine: Arc<Engine>,
    pub caller: Caller,
    /// `None` when the enclosing HTTP request writes the record itself.
    pub audit: Option<Arc<AuditLog>>,
}

/// The audit filters of a tool call: the filter arguments of searches and listings.
fn audit_filters(spec: &ToolSpec, args: &Map<String, Value>) -> Value {
    if !spec.audits_filters {
        return Value::Null;
    }
    let mut keys: Vec<&str> = FILTER_PROPS.iter().map(|(k, _)| *k).collect();
    keys.extend(["tags", "tags_all", "metadata"]);
    Value::Object(
        args.iter().filter(|(k, _)| keys.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect(),
    )
}

/// The ids a tool result names, for the audit log.
fn audit_targets(out: &ToolOutput) -> Vec<String> {
    let v = &out.value;
    [&v["id"], &v["memory"]["id"], &v["memory_id"]]
        .into_iter()
        .find_map(Value::as_str)
        .map(|id| vec![id.to_string()])
        .unwrap_or_default()
}

/// Run a tool as `ctx.caller` and write its audit record. `Err` only for a tool name
/// not in the catalogue.
pub async fn call_tool(ctx: &ToolContext, name: &str, args: Map<String, Value>) -> Result<ToolOutput, UnknownTool> {
    let spec = tool(name).ok_or_else(|| UnknownTool(name.to_string()))?;
    let filters = audit_filters(spec, &args);
    let started = std::time::Instant::now();
    let out = run_tool(ctx, name, args).await?;
    crate::telemetry::tool_call(name, out.status, started);
    if let Some(audit) = &ctx.audit {
        audit.record(ctx.caller.event(&format!("mcp.{name}"), audit_targets(&out), filters, out.status));
    }
    Ok(out)
}

/// A tool name that is not in the catalogue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownTool(pub String);

/// One tool: what it is called and takes, who may call it, and what runs it.
pub struct ToolSpec {
    pub name: &'static str,
    pub description: &'static str,
    pub input_schema: Value,
    /// What the caller's role must allow (`None`: any caller).
    pub permission: Option<Permission>,
    /// Its filter arguments go into the audit record (searches and listings).
    audits_filters: bool,
    handler: fn(Call) -> BoxFuture<'static, ToolOutput>,
}

/// Every tool memhub serves, in a stable order; built once.
pub fn tools() -> &'static [ToolSpec] {
    static TOOLS: std::sync::LazyLock<Vec<ToolSpec>> = std::sync::LazyLock::new(tool_table);
    &TOOLS
}

/// The tool called `name`.
pub fn tool(name: &str) -> Option<&'static ToolSpec> {
    tools().iter().find(|s| s.name == name)
}

const FILTER_PROPS: &[(&str, &str)] = &[
    ("system_id", "Only memories from this source system."),
    ("kind", "Only this kind (chat, event, insight, decision, context, conversation, reflection, note, ...)."),
    ("user_id", "Only memories of this user."),
    ("agent_id", "Only memories of this agent."),
    ("session_id", "Only memories of this session."),
    ("project", "Only memories of this project."),
    ("since", "Only memories created at or after this ISO-8601 time."),
    ("until", "Only memories created before this ISO-8601 time."),
];

fn filter_properties(props: &mut Map<String, Value>) {
    for (name, description) in FILTER_PROPS {
        props.insert((*name).into(), json!({"type": "string", "description": description}));
    }
    props.insert("tags".into(), json!({"type": "array", "items": {"type": "string"}, "description": "Memories with at least one of these tags."}));
    props.insert(
        "tags_all".into(),
        json!({"type": "array", "items": {"type": "string"}, "description": "Memories with all of these tags."}),
    );
    props.insert(
        "metadata".into(),
        json!({"type": "object", "description": "Equality on top-level metadata keys, e.g. {\"speaker\": \"Ann\"}."}),
    );
}

fn object_schema(required: &[&str], props: Map<String, Value>) -> Value {
    json!({"type": "object", "properties": props, "required": required})
}

fn props(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

fn embedding_prop(what: &str) -> Value {
    json!({"type": ["array", "null"], "items": {"type": "number"}, "description": format!("{what} (384 floats by default), or null to store without a vector.")})
}

fn tool_table() -> Vec<ToolSpec> {
    let memory_item = json!({
        "memory_id": {"type": "string", "description": "Your id for this memory; unique within its source system. Re-sending the same id with the same text is a no-op; other text makes a new version."},
        "text": {"type": "string", "description": "The memory's text."},
        "embedding": embedding_prop("The text's embedding"),
        "metadata": {"type": ["object", "null"], "description": "Free metadata, kept whole. `source` names the source system, `type` the kind (session_memory, conversation, reflection, insight, ...), `created_at` the event time (ISO-8601); `user_id`, `session_id`, `agent_id`, `project` and `tags` are also indexed for filters."}
    });
    let mut search = props(json!({
        "query": {"type": "string", "description": "What to look for, in natural language or keywords."},
        "limit": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 10, "description": "Most results to return."},
        "query_embedding": {"type": "array", "items": {"type": "number"}, "description": "Optional query vector; enables semantic (vector) retrieval."},
        "semantic_ratio": {"type": "number", "minimum": 0, "maximum": 1, "description": "0 = keywords only, 1 = vector only; default 0.3."},
        "min_score": {"type": "number", "description": "Drop results whose similarity is below this (0..1)."},
        "recency_half_life": {"type": ["string", "number"], "description": "Favour recent memories: scores halve every this long (seconds, or e.g. \"12h\", \"7d\")."},
        "include_cold": {"type": "boolean", "default": false, "description": "Also search the cold tier (archived memories in object storage, older than the warm boundary); slower."},
        "tiers": {"type": "array", "items": {"type": "string", "enum": ["hot", "warm", "cold"]}, "description": "Search only these tiers (default hot and warm)."}
    }));
    filter_properties(&mut search);
    let mut list = props(json!({
        "limit": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50, "description": "Page size."},
        "cursor": {"type": "string", "description": "The next_cursor of the previous page."}
    }));
    filter_properties(&mut list);
    let address = json!({
        "id": {"type": "string", "description": "The server id (UUID) of the memory."},
        "memory_id": {"type": "string", "description": "Your memory_id (used when id is not given)."},
        "system_id": {"type": "string", "description": "The source system of memory_id; needed only if the same memory_id exists in several systems."}
    });
    vec![
        ToolSpec {
            name: "store_memory",
            permission: Some(Permission::Write),
            audits_filters: false,
            handler: |c| Box::pin(store_memory_tool(c)),
            description: "Store one memory (text plus optional embedding and metadata) durably. Returns status \"stored\" with the time, or status \"failed\" with the reason.",
            input_schema: object_schema(&["memory_id", "text"], props(memory_item.clone())),
        },
        ToolSpec {
            name: "batch_store_memories",
            permission: Some(Permission::Write),
            audits_filters: false,
            handler: |c| Box::pin(batch_store_memories_tool(c)),
            description: "Store up to 1000 memories in one durable transaction. Each item is {memory_id, text, embedding?, metadata?}. Returns counts and a per-item error list; status is completed, partial or failed.",
            input_schema: json!({"type": "object", "required": ["memories"], "properties": {"memories": {
                "type": "array", "maxItems": 1000, "items": {"type": "object", "required": ["memory_id", "text"], "properties": memory_item}}}}),
        },
        ToolSpec {
            name: "search_memories",
            permission: Some(Permission::Read),
            audits_filters: true,
            handler: |c| Box::pin(search_memories_tool(c)),
            description: "Search memories by meaning and keywords, optionally filtered by source system, kind, user, session, project, tags, metadata and time range. Returns the best matches with scores.",
            input_schema: object_schema(&["query"], search),
        },
        ToolSpec {
            name: "search_all_systems",
            permission: Some(Permission::Read),
            audits_filters: true,
            handler: |c| Box::pin(search_all_systems_tool(c)),
            description: "Search across every source system at once (Akosha-compatible). Returns {query, total_results, results:[{system_id, conversation_id, content, similarity, timestamp}], mode}; results below `threshold` similarity are dropped.",
            input_schema: object_schema(&["query"], props(json!({
                "query": {"type": "string", "description": "What to look for."},
                "limit": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 10},
                "threshold": {"type": "number", "default": 0.7, "description": "Minimum similarity (0..1). Without a query_embedding, similarity is the share of query words found."},
                "system_id": {"type": "string", "description": "Only this source system."},
                "query_embedding": {"type": "array", "items": {"type": "number"}, "description": "Optional query vector for semantic search."}
            }))),
        },
        ToolSpec {
            name: "generate_embedding",
            permission: None,
            audits_filters: false,
            handler: |c| Box::pin(embed_tool(c)),
            description: "Embed one text with the server's encoder (all-MiniLM-L6-v2 by default, Akosha-compatible). Returns {text, embedding_dim, embedding, mode}.",
            input_schema: object_schema(&["text"], props(json!({"text": {"type": "string", "description": "The text to embed."}}))),
        },
        ToolSpec {
            name: "generate_batch_embeddings",
            permission: None,
            audits_filters: false,
            handler: |c| Box::pin(embed_tool(c)),
            description: "Embed many texts with the server's encoder (Akosha-compatible). Returns {count, embedding_dim, embeddings, mode}.",
            input_schema: object_schema(&["texts"], props(json!({
                "texts": {"type": "array", "items": {"type": "string"}, "maxItems": 1000, "description": "The texts to embed."},
                "batch_size": {"type": "integer", "minimum": 1, "maximum": 256, "default": 32, "description": "Texts per encoder batch."}
            }))),
        },
        ToolSpec {
            name: "get_memory",
            permission: Some(Permission::Read),
            audits_filters: false,
            handler: |c| Box::pin(get_memory_tool(c)),
            description: "Fetch one memory by its server id, or by memory_id (and system_id when ambiguous).",
            input_schema: json!({"type": "object", "properties": address}),
        },
        ToolSpec {
            name: "delete_memory",
            permission: Some(Permission::Change),
            audits_filters: false,
            handler: |c| Box::pin(delete_memory_tool(c)),
            description: "Delete one memory and its whole version history, by server id or memory_id.",
            input_schema: json!({"type": "object", "properties": address}),
        },
        ToolSpec {
            name: "list_memories",
            permission: Some(Permission::Read),
            audits_filters: true,
            handler: |c| Box::pin(list_memories_tool(c)),
            description: "List memories newest first, filtered like search_memories, one page at a time (pass next_cursor back as cursor).",
            input_schema: object_schema(&[], list),
        },
        ToolSpec {
            name: "list_changes",
            permission: Some(Permission::Read),
            audits_filters: true,
            handler: |c| Box::pin(list_changes_tool(c)),
            description: "Catch up on what changed: every committed change you may read (created, updated, deleted, frozen, thawed, moved, embedded, purged, erased, entity_upserted, relation_upserted), oldest first after sequence number `after`. Pass next_after back as after for the next page; reset = true means changes were pruned and you should list memories again.",
            input_schema: object_schema(&[], props(json!({
                "after": {"type": "integer", "minimum": 0, "default": 0, "description": "Return changes after this sequence number (0: every retained change)."},
                "limit": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100, "description": "Most changes to return."},
                "system_id": {"type": "string", "description": "Only changes of memories from this source system."},
                "kind": {"type": "string", "description": "Only changes of memories of this kind."},
                "user_id": {"type": "string", "description": "Only changes of this user's memories."},
                "ops": {"type": "array", "items": {"type": "string", "enum": memhub_types::ChangeOp::ALL.iter().map(|o| o.as_str()).collect::<Vec<_>>()}, "description": "Only these operations."}
            }))),
        },
        ToolSpec {
            name: "store_reflection",
            permission: Some(Permission::Write),
            audits_filters: false,
            handler: |c| Box::pin(store_reflection_tool(c)),
            description: "Store a reflection (an insight an agent recorded about its work) as a memory of kind reflection (Session-Buddy-compatible).",
            input_schema: object_schema(&["reflection_id", "content"], props(json!({
                "reflection_id": {"type": "string", "description": "Your id for this reflection."},
                "content": {"type": "string", "description": "The reflection's text."},
                "embedding": embedding_prop("The content's embedding"),
                "metadata": {"type": ["object", "null"], "description": "Free metadata; `source` names the source system, `tags` are indexed."}
            }))),
        },
        ToolSpec {
            name: "create_entity",
            permission: Some(Permission::Graph),
            audits_filters: false,
            handler: |c| Box::pin(create_entity_tool(c)),
            description: "Create or update a knowledge-graph entity, keyed by name and entity_type (Session-Buddy-compatible). Returns its id.",
            input_schema: object_schema(&["name", "entity_type"], props(json!({
                "name": {"type": "string"}, "entity_type": {"type": "string"},
                "observations": {"type": "array", "items": {"type": "string"}},
                "properties": {"type": ["object", "null"]}, "metadata": {"type": ["object", "null"]}
            }))),
        },
        ToolSpec {
            name: "create_relation",
            permission: Some(Permission::Graph),
            audits_filters: false,
            handler: |c| Box::pin(create_relation_tool(c)),
            description: "Create or update a knowledge-graph relation between two entities (Session-Buddy-compatible). Returns its id.",
            input_schema: object_schema(&["from_entity", "to_entity", "relation_type"], props(json!({
                "from_entity": {"type": "string"}, "to_entity": {"type": "string"}, "relation_type": {"type": "string"},
                "properties": {"type": ["object", "null"]}, "metadata": {"type": ["object", "null"]}
            }))),
        },
    ]
}

/// The arguments of `store_memory` and of each `batch_store_memories` item.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreArgs {
    #[serde(alias = "id")]
    memory_id: String,
    text: String,
    #[serde(default)]
    embedding: Option<Vec<f32>>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
}

fn parse<T: DeserializeOwned>(args: Value) -> Result<T, Error> {
    decode_json(args)
}

/// An Akosha-style `(id, text, embedding, metadata)` as a memory: the one mapping
/// the pull worker's Akosha uploads use too ([`akosha::to_memory`]).
fn akosha_memory(
    engine: &Engine,
    id: String,
    text: String,
    embedding: Option<Vec<f32>>,
    metadata: Option<Map<String, Value>>,
    kind: KindRule<'_>,
) -> Result<NewMemory, Error> {
    let m = AkoshaMemory { id, text, embedding, timestamp: None, metadata: metadata.unwrap_or_default() };
    akosha::to_memory(engine, m, None, kind)
}

fn stored_result(s: &Stored) -> Value {
    json!({
        "status": "stored",
        "memory_id": s.memory.memory_id,
        "stored_at": format_micros(s.memory.updated_at),
        "embedding_dim": s.memory.embedding.as_ref().map_or(0, Vec::len),
        "source": s.memory.system_id,
    })
}

/// Strip the embedding for responses (it is large and agents rarely need it).
fn public(mut m: Memory) -> Value {
    m.embedding = None;
    serde_json::to_value(m).expect("memories serialize")
}

/// Find a memory from `{id}` or `{memory_id, system_id?}`.
#[derive(Debug, Deserialize)]
struct Address {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    memory_id: Option<String>,
    #[serde(default)]
    system_id: Option<String>,
}

fn resolve(engine: &Engine, tenant: &Scope, a: &Address) -> Result<Memory, Error> {
    match (&a.id, &a.memory_id) {
        (Some(id), _) => {
            let id = Uuid::parse_str(id).map_err(|_| Error::field(ErrorCode::InvalidField, "id", "not a UUID"))?;
            engine.get(tenant, &id)
        }
        (None, Some(mid)) => engine.get_by_memory_id(tenant, a.system_id.as_deref(), mid),
        (None, None) => Err(Error::new(ErrorCode::InvalidField, "give id or memory_id")),
    }
}

#[derive(Debug, Deserialize)]
struct ListArgs {
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    cursor: Option<String>,
    #[serde(flatten)]
    filter: MemoryFilter,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangesArgs {
    #[serde(default)]
    after: Option<u64>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    system_id: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    ops: Option<Vec<memhub_types::ChangeOp>>,
}

#[derive(Debug, Deserialize)]
struct SearchAllArgs {
    query: String,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    threshold: Option<f32>,
    #[serde(default)]
    system_id: Option<String>,
    #[serde(default)]
    query_embedding: Option<Vec<f32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbedOne {
    text: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbedMany {
    texts: Vec<String>,
    /// Accepted for Akosha compatibility; the encoder batches by 32 itself.
    #[serde(default)]
    batch_size: Option<usize>,
}

#[derive(Debug, Deserialize)]
struct ReflectionArgs {
    reflection_id: String,
    content: String,
    #[serde(default)]
    embedding: Option<Vec<f32>>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
}

fn null_to_empty(args: &mut Map<String, Value>, keys: &[&str]) {
    for k in keys {
        if args.get(*k).is_some_and(Value::is_null) {
            args.remove(*k);
        }
    }
}

/// Run a tool as `ctx.caller`, without an audit record of its own.
pub async fn run_tool(ctx: &ToolContext, name: &str, args: Map<String, Value>) -> Result<ToolOutput, UnknownTool> {
    let spec = tool(name).ok_or_else(|| UnknownTool(name.to_string()))?;
    if let Some(p) = spec.permission {
        if let Err(e) = ctx.caller.require(p) {
            return Ok(ToolOutput::error(&e));
        }
    }
    let call = Call {
        name: spec.name,
        engine: ctx.engine.clone(),
        access: ctx.caller.access.clone(),
        tenant: ctx.caller.tenant.clone(),
        args,
    };
    Ok((spec.handler)(call).await)
}

/// One tool call, as its handler gets it.
struct Call {
    name: &'static str,
    engine: Arc<Engine>,
    access: memhub_engine::Access,
    tenant: String,
    args: Map<String, Value>,
}

/// The shape most tools share: parse the arguments as `A`, run `work` on a blocking
/// thread, answer with `respond`'s JSON or the error.
async fn answer<A, T>(
    args: Map<String, Value>,
    work: impl FnOnce(A) -> Result<T, Error> + Send + 'static,
    respond: impl FnOnce(T) -> Value,
) -> ToolOutput
where
    A: DeserializeOwned,
    T: Send + 'static,
{
    match blocking(move || work(parse(Value::Object(args))?)).await {
        Ok(t) => ToolOutput::ok(respond(t)),
        Err(e) => ToolOutput::error(&e),
    }
}

async fn store_memory_tool(c: Call) -> ToolOutput {
    let engine = c.engine;
    let write = c.access.write.clone();
    let args = c.args;
    let memory_id = args.get("memory_id").or(args.get("id")).and_then(Value::as_str).map(str::to_owned);
    let failed = |e: Error| {
        ToolOutput::failed_with(
            json!({"status": "failed", "memory_id": memory_id, "error": e.message(), "code": e.code.as_str()}),
            &e,
        )
    };
    let result = blocking(move || {
        let a: StoreArgs = parse(Value::Object(args))?;
        let new = akosha_memory(&engine, a.memory_id, a.text, a.embedding, a.metadata, KindRule::FromMetadata)?;
        engine.store_memory(&write, new, IngestionMethod::HttpPush)
    })
    .await;
    match result {
        Ok(s) => ToolOutput::ok(stored_result(&s)),
        Err(e) => failed(e),
    }
}

async fn batch_store_memories_tool(c: Call) -> ToolOutput {
    batch_store(c.engine, c.access.write, c.args).await
}

async fn search_memories_tool(c: Call) -> ToolOutput {
    let Call { engine, access, args, .. } = c;
    answer(
        args,
        move |req: SearchRequest| engine.search(&access.read, &req),
        |r| serde_json::to_value(r).expect("serializes"),
    )
    .await
}

async fn search_all_systems_tool(c: Call) -> ToolOutput {
    let Call { engine, access, args, .. } = c;
    let search = move |a: SearchAllArgs| {
        let req = SearchRequest {
            query: a.query,
            query_embedding: a.query_embedding,
            limit: a.limit,
            min_score: Some(a.threshold.unwrap_or(0.7)),
            filter: MemoryFilter { system_id: a.system_id, ..Default::default() },
            ..Default::default()
        };
        engine.search(&access.read, &req)
    };
    answer(args, search, |r| {
        json!({
            "query": r.query,
            "total_results": r.total_results,
            "results": r.results.iter().map(|h| json!({
                "system_id": h.memory.system_id,
                "conversation_id": h.memory.memory_id,
                "content": h.memory.content,
                "similarity": h.similarity,
                "timestamp": format_micros(h.memory.created_at),
            })).collect::<Vec<_>>(),
            "mode": r.mode,
        })
    })
    .await
}

async fn embed_tool(c: Call) -> ToolOutput {
    let engine = c.engine;
    let args = c.args;
    let name = c.name;
    let single = name == "generate_embedding";
    let result = blocking(move || {
        let embedder = engine.embedder().cloned().ok_or_else(|| {
            Error::new(
                ErrorCode::InvalidField,
                "no server-side encoder is configured: install all-MiniLM-L6-v2 (scripts/fetch-model.sh) or set embedder.kind",
            )
        })?;
        let texts: Vec<String> = if single {
            vec![parse::<EmbedOne>(Value::Object(args))?.text]
        } else {
            let a: EmbedMany = parse(Value::Object(args))?;
            if a.texts.len() > 1000 {
                return Err(Error::field(ErrorCode::BatchTooLarge, "texts", "at most 1000 texts per call"));
            }
            if a.batch_size == Some(0) {
                return Err(Error::field(ErrorCode::InvalidField, "batch_size", "must be at least 1"));
            }
            a.texts
        };
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let vectors = embedder.embed(&refs).map_err(|e| Error::new(ErrorCode::InternalError, e.to_string()))?;
        Ok((texts, vectors, embedder.dim()))
    })
    .await;
    match result {
        Ok((mut texts, mut vectors, dim)) if single => ToolOutput::ok(json!({
            "text": texts.pop(), "embedding_dim": dim, "embedding": vectors.pop(), "mode": "real",
        })),
        Ok((_, vectors, dim)) => ToolOutput::ok(json!({
            "count": vectors.len(), "embedding_dim": dim, "embeddings": vectors, "mode": "real",
        })),
        Err(e) => ToolOutput::error(&e),
    }
}

async fn get_memory_tool(c: Call) -> ToolOutput {
    let Call { engine, access, args, .. } = c;
    answer(
        args,
        move |a: Address| resolve(&engine, &access.read, &a),
        |m| json!({"status": "found", "memory": public(m)}),
    )
    .await
}

async fn delete_memory_tool(c: Call) -> ToolOutput {
    let Call { engine, access, args, .. } = c;
    let delete = move |a: Address| {
        let m = resolve(&engine, &access.read, &a)?;
        engine.delete(&access, &m.id)
    };
    answer(
        args,
        delete,
        |m| json!({"status": "deleted", "id": m.id, "memory_id": m.memory_id, "system_id": m.system_id}),
    )
    .await
}

async fn list_memories_tool(c: Call) -> ToolOutput {
    let Call { engine, access, args, .. } = c;
    let list = move |a: ListArgs| engine.list(&access.read, &a.filter, a.limit, a.cursor.as_deref());
    answer(args, list, |page| {
        json!({
            "count": page.memories.len(),
            "memories": page.memories.into_iter().map(public).collect::<Vec<_>>(),
            "next_cursor": page.next_cursor,
        })
    })
    .await
}

async fn list_changes_tool(c: Call) -> ToolOutput {
    let Call { engine, access, args, .. } = c;
    let changes = move |a: ChangesArgs| {
        let after = i64::try_from(a.after.unwrap_or(0)).unwrap_or(i64::MAX);
        let filter =
            memhub_types::ChangeFilter { system_id: a.system_id, kind: a.kind, user_id: a.user_id, ops: a.ops };
        engine.changes(&access.read, after, &filter, a.limit)
    };
    answer(args, changes, |page| {
        json!({
            "count": page.changes.len(),
            "changes": page.changes.iter().map(|c| crate::events::change_json(c, None)).collect::<Vec<_>>(),
            "next_after": page.next_after,
            "reset": page.reset,
        })
    })
    .await
}

async fn store_reflection_tool(c: Call) -> ToolOutput {
    let engine = c.engine;
    let write = c.access.write.clone();
    let args = c.args;
    let reflection_id = args.get("reflection_id").and_then(Value::as_str).map(str::to_owned);
    let result = blocking(move || {
        let a: ReflectionArgs = parse(Value::Object(args))?;
        let new = akosha_memory(
            &engine,
            a.reflection_id,
            a.content,
            a.embedding,
            a.metadata,
            KindRule::Always("reflection"),
        )?;
        engine.store_memory(&write, new, IngestionMethod::Mcp)
    })
    .await;
    match result {
        Ok(s) => {
            let mut v = stored_result(&s);
            v["reflection_id"] = json!(s.memory.memory_id);
            v["id"] = json!(s.memory.id);
            ToolOutput::ok(v)
        }
        Err(e) => ToolOutput::failed_with(
            json!({"status": "failed", "reflection_id": reflection_id, "error": e.message(), "code": e.code.as_str()}),
            &e,
        ),
    }
}

async fn create_entity_tool(c: Call) -> ToolOutput {
    let Call { engine, tenant, mut args, .. } = c;
    null_to_empty(&mut args, &["observations", "properties", "metadata"]);
    answer(
        args,
        move |e: NewEntity| engine.store_entity(&tenant, e),
        |e| json!({"status": "created", "id": e.id, "name": e.entity.name, "entity_type": e.entity.entity_type}),
    )
    .await
}

async fn create_relation_tool(c: Call) -> ToolOutput {
    let Call { engine, tenant, mut args, .. } = c;
    null_to_empty(&mut args, &["properties", "metadata"]);
    answer(
        args,
        move |r: NewRelation| engine.store_relation(&tenant, r),
        |r| {
            json!({
                "status": "created", "id": r.id, "from_entity": r.relation.from_entity,
                "to_entity": r.relation.to_entity, "relation_type": r.relation.relation_type,
            })
        },
    )
    .await
}

async fn batch_store(engine: Arc<Engine>, scope: Scope, args: Map<String, Value>) -> ToolOutput {
    let max = engine.config().max_batch;
    let items = match args.get("memories") {
        Some(Value::Array(items)) => items.clone(),
        _ => {
            let e = Error::field(
                ErrorCode::InvalidField,
                "memories",
                "must be a list of {memory_id, text, embedding?, metadata?}",
            );
            return ToolOutput::failed(
                json!({"status": "failed", "total": 0, "stored": 0, "failed": 0, "errors": [], "error": e.message()}),
            );
        }
    };
    let total = items.len();
    if total > max {
        return ToolOutput::failed(json!({
            "status": "failed", "total": total, "stored": 0, "failed": total,
            "error": format!("Batch size exceeds maximum of {max} memories"),
        }));
    }
    let result = blocking(move || {
        // Items that do not parse fail alone; the rest go to the store in one transaction.
        let mut ids = Vec::with_capacity(total);
        let mut errors: Vec<(usize, Error)> = Vec::new();
        let mut news = Vec::new();
        let mut positions = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            ids.push(item.get("memory_id").or(item.get("id")).and_then(Value::as_str).map(str::to_owned));
            let built = parse::<StoreArgs>(item)
                .and_then(|a| {
                    akosha_memory(&engine, a.memory_id, a.text, a.embedding, a.metadata, KindRule::FromMetadata)
                })
                .map_err(|e| e.within(&format!("memories[{i}]")));
            match built {
                Ok(n) => {
                    news.push(n);
                    positions.push(i);
                }
                Err(e) => errors.push((i, e)),
            }
        }
        let results = engine.store_batch(&scope, news, IngestionMethod::HttpPush)?;
        let mut stored = 0;
        for (pos, r) in positions.into_iter().zip(results) {
            match r {
                Ok(_) => stored += 1,
                Err(e) => errors.push((pos, e.within(&format!("memories[{pos}]")))),
            }
        }
        errors.sort_by_key(|(i, _)| *i);
        Ok::<_, Error>((stored, errors, ids))
    })
    .await;
    match result {
        Ok((stored, errors, ids)) => {
            let failed = errors.len();
            let status = if failed == 0 {
                "completed"
            } else if stored > 0 {
                "partial"
            } else {
                "failed"
            };
            let errors: Vec<Value> =
                errors.into_iter().map(|(i, e)| json!({"memory_id": ids[i], "error": e.message()})).collect();
            let out = json!({
                "status": status, "total": total, "stored": stored, "failed": failed,
                "errors": errors, "stored_at": format_micros(now_micros()),
            });
            if status == "failed" && total > 0 {
                ToolOutput::failed(out)
            } else {
                ToolOutput::ok(out)
            }
        }
        Err(e) => ToolOutput::failed(json!({
            "status": "failed", "total": total, "stored": 0, "failed": total, "errors": [], "error": e.message(),
        })),
    }
}
