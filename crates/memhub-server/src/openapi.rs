//! The OpenAPI 3.1 document served at `/openapi.json`.

use axum::Json;
use memhub_engine::{limits, EngineConfig};
use memhub_types::KindSchema;
use serde_json::{json, Value};
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
        crate::replica::health,
        crate::events::events,
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
        memhub_types::Change,
        memhub_types::ChangeOp,
        rest::StoreResponse,
        rest::BatchRequest,
        rest::ListResponse,
        rest::RegisterSchema,
        rest::RetrieveRequest,
    ))
)]
pub struct ApiDoc;

/// `GET /openapi.json`: the derived document with the constraints the API really
/// enforces written in (see [`document`]). The route needs no credentials, so when
/// auth is required it describes only the built-in kinds: registered ones (an
/// admin's schemas) are for `GET /v1/schemas`, behind a key.
pub async fn openapi_json(axum::extract::State(state): axum::extract::State<crate::AppState>) -> Json<Value> {
    let mut kinds = state.engine.schemas();
    if state.guard.required {
        kinds.retain(|k| k.builtin);
    }
    Json(document(state.engine.config(), &kinds))
}

/// A list cursor as this server writes it (`created_at_seq`, each within i64).
const CURSOR: &str = "^-?[0-9]{1,18}_-?[0-9]{1,18}$";

/// A memory's server id.
const UUID: &str = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";

/// An RFC 3339 time, as `parse_timestamp` reads it.
const DATE_TIME: &str = "^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt ]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,9})?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$";

/// Characters memhub refuses in ids and names (`char::is_control`).
const NO_CONTROL: &str = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$";

/// The OpenAPI document: utoipa's, derived from the types and handlers, plus what
/// depends on this server (the embedding dimension, the size limits, the kinds
/// registered now and their attribute schemas) and the limits `prepare.rs` and the
/// handlers enforce, so a client generated from it, or a fuzzer, sends what the
/// server accepts. Every operation lists the catalogue's errors it can answer with.
pub fn document(config: &EngineConfig, kinds: &[KindSchema]) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serializes");
    let schemas = &mut doc["components"]["schemas"];
    schemas["Error"] = json!({
        "type": "object", "required": ["error"],
        "description": "Every error: a stable code, its type, a message and the field it names.",
        "properties": {"error": {"type": "object", "required": ["code", "type", "message"], "properties": {
            "code": {"type": "string"}, "type": {"type": "string"}, "message": {"type": "string"},
            "field": {"type": "string"}}}}
    });
    for name in ["SearchHit", "SearchRequest", "RetrieveRequest"] {
        flatten(schemas, name);
    }
    let text = |max: usize| json!({"minLength": 1, "maxLength": max, "pattern": NO_CONTROL});
    let dim = config.embedding_dim;
    // Vectors are f32: a JSON number beyond f32's range is refused.
    let float = json!({"type": "number", "minimum": -f32::MAX, "maximum": f32::MAX});
    let vector = json!({"minItems": dim, "maxItems": dim, "items": float});
    // `format` alone is an annotation in JSON Schema 2020-12: the pattern makes it binding.
    let time = json!({"format": "date-time", "pattern": DATE_TIME});
    let tags = json!({"maxItems": limits::TAGS,
        "items": {"type": "string", "minLength": 1, "maxLength": limits::TAG_CHARS, "pattern": NO_CONTROL}});
    let limit = json!({"minimum": 1, "maximum": limits::PAGE});
    // Content: not blank, at most `max_content_bytes` bytes of UTF-8; maxLength counts
    // characters, so it assumes the worst, 4 bytes each.
    let content = json!({"minLength": 1, "maxLength": config.max_content_bytes / 4, "pattern": "\\S",
        "description": format!("Not blank; at most {} bytes of UTF-8 (maxLength assumes 4 bytes a character).", config.max_content_bytes)});
    let latest = |kind: &str| kinds.iter().filter(|k| k.kind == kind).map(|k| k.version).max();
    // A new memory: one variant per kind, whose attributes satisfy that kind's schema.
    let new_memory = &mut schemas["NewMemory"]["properties"];
    for (field, max) in [
        ("tenant", limits::TENANT_CHARS),
        ("system_id", limits::SYSTEM_ID_CHARS),
        ("memory_id", limits::MEMORY_ID_CHARS),
        ("user_id", limits::NAME_CHARS),
        ("agent_id", limits::NAME_CHARS),
        ("session_id", limits::NAME_CHARS),
        ("project", limits::NAME_CHARS),
        ("embedding_model", limits::MODEL_CHARS),
    ] {
        merge(new_memory, field, &text(max));
    }
    merge(new_memory, "content", &content);
    merge(new_memory, "embedding", &vector);
    merge(new_memory, "tags", &tags);
    merge(new_memory, "created_at", &time);
    merge(new_memory, "expires_at", &time);
    let base = schemas["NewMemory"].clone();
    // One variant per kind and version: its attributes satisfy that version's schema.
    // Without `schema_version` a write takes the kind's latest; without `kind`, `note`.
    let variants: Vec<Value> = kinds
        .iter()
        .map(|k| {
            let mut v = base.clone();
            v.as_object_mut().map(|o| o.remove("description"));
            let is_latest = latest(&k.kind) == Some(k.version);
            let mut attributes = k.schema.clone();
            attributes.as_object_mut().map(|o| o.remove("$schema"));
            // A `$ref` inside a registered schema would resolve against this document.
            if mentions_ref(&attributes) {
                attributes =
                    json!({"type": "object", "description": "validated against the kind's schema (GET /v1/schemas)"});
            }
            let needs_attributes = attributes.get("required").and_then(Value::as_array).is_some_and(|r| !r.is_empty());
            let mut required = vec![json!("content")];
            if k.kind == "note" && is_latest {
                v["properties"]["kind"] = json!({"enum": ["note", null]});
            } else {
                v["properties"]["kind"] = json!({"const": k.kind});
                required.push(json!("kind"));
            }
            if needs_attributes {
                required.push(json!("attributes"));
                v["properties"]["attributes"] = attributes;
            } else {
                v["properties"]["attributes"] = json!({"anyOf": [{"type": "null"}, attributes]});
            }
            if is_latest {
                v["properties"]["schema_version"] = json!({"enum": [k.version, null]});
            } else {
                v["properties"]["schema_version"] = json!({"const": k.version});
                required.push(json!("schema_version"));
            }
            v["required"] = Value::Array(required);
            v
        })
        .collect();
    schemas["NewMemory"] = json!({"description": base["description"], "anyOf": variants});

    let patch = &mut schemas["MemoryPatch"]["properties"];
    merge(patch, "content", &content);
    merge(patch, "embedding", &vector);
    merge(patch, "embedding_model", &text(limits::MODEL_CHARS));
    merge(patch, "tags", &tags);
    merge(patch, "expires_at", &time);

    // Searches: a query text or a (non-zero) query vector, within bounds.
    let search = &mut schemas["SearchRequest"];
    let props = &mut search["properties"];
    merge(
        props,
        "query_embedding",
        &json!({"minItems": dim, "maxItems": dim, "items": float,
                                            // Not the zero vector once read as f32.
                                            "contains": {"anyOf": [{"minimum": f32::MIN_POSITIVE}, {"maximum": -f32::MIN_POSITIVE}]}}),
    );
    merge(props, "limit", &limit);
    merge(props, "semantic_ratio", &json!({"minimum": 0, "maximum": 1}));
    merge(props, "min_score", &json!({"minimum": 0, "maximum": 1}));
    props["recency_half_life"] = json!({"description": props["recency_half_life"]["description"],
        "anyOf": [{"type": "null"}, {"type": "number", "exclusiveMinimum": 0},
                  {"type": "string", "pattern": "^([0-9]*[1-9][0-9]*(\\.[0-9]+)?|[0-9]+\\.[0-9]*[1-9][0-9]*)(s|m|h|d|w)$"}]});
    search["anyOf"] = json!([
        {"properties": {"query": {"type": "string", "pattern": "\\S"}}, "required": ["query"]},
        {"properties": {"query_embedding": {"type": "array"}}, "required": ["query_embedding"]},
    ]);
    for name in ["SearchRequest", "RetrieveRequest", "MemoryFilter"] {
        merge(&mut schemas[name]["properties"], "since", &time);
        merge(&mut schemas[name]["properties"], "until", &time);
    }
    let retrieve = &mut schemas["RetrieveRequest"]["properties"];
    merge(retrieve, "id", &json!({"format": "uuid", "pattern": UUID}));
    merge(retrieve, "limit", &limit);
    merge(retrieve, "cursor", &json!({"pattern": CURSOR}));
    // A batch's items are validated one by one and refused items reported in
    // `errors[]`, so the request itself takes any objects.
    schemas["BatchRequest"]["properties"]["memories"] = json!({"type": "array", "maxItems": config.max_batch,
        "items": {"type": "object", "description": "A NewMemory (see that schema); an invalid one is reported in errors[]."},
        "description": "Up to max_batch memories; each is validated on its own."});
    let register = &mut schemas["RegisterSchema"]["properties"];
    merge(register, "kind", &json!({"pattern": "^[a-z][a-z0-9_]{0,63}$"}));
    merge(register, "version", &json!({"minimum": 1, "maximum": memhub_types::schema::MAX_VERSION}));

    let Some(paths) = doc["paths"].as_object_mut() else { return doc };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else { continue };
        for (method, op) in item.iter_mut() {
            for p in op.get_mut("parameters").and_then(Value::as_array_mut).into_iter().flatten() {
                let extra = match p["name"].as_str() {
                    Some("id") if p["in"] == "path" => json!({"format": "uuid", "pattern": UUID}),
                    Some("limit") => limit.clone(),
                    Some("since" | "until") => time.clone(),
                    // Cursors are opaque, but only this server's shape decodes.
                    Some("cursor") => json!({"pattern": CURSOR}),
                    _ => continue,
                };
                merge(p, "schema", &extra);
            }
            let errors = errors_of(path, method, op.get("requestBody").is_some());
            let responses = &mut op["responses"];
            for (status, description) in errors {
                let entry = &mut responses[status.to_string()];
                if entry.is_null() {
                    *entry = json!({"description": description});
                }
                entry["content"] = json!({"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}});
            }
        }
    }
    doc
}

/// The catalogue's errors an operation can answer with, besides those it documents.
fn errors_of(path: &str, method: &str, has_body: bool) -> Vec<(u16, &'static str)> {
    if path == "/health" {
        return Vec::new();
    }
    let mut out = vec![
        (400, "invalid request: the error names the field"),
        (401, "missing or invalid credentials"),
        (403, "the role or scope does not allow this"),
        (429, "rate limited; see Retry-After"),
        (500, "storage or internal error"),
    ];
    if has_body {
        out.push((413, "body, content or batch over a configured limit"));
    }
    if path.contains("{id}") || path.ends_with("retrieve") {
        out.push((404, "no such memory in your tenant"));
    }
    if method == "post" && (path.ends_with("/memories") || path.ends_with("/store") || path.ends_with("/batch")) {
        out.push((422, "attributes do not satisfy the kind's schema"));
        out.push((409, "memory_id is in several systems; name the system_id"));
    }
    if method == "post" || method == "patch" {
        out.push((503, "the cold tier's object storage cannot be reached"));
    }
    out
}

/// Add `extra`'s keys to the schema at `parent[key]`, if there is one.
fn merge(parent: &mut Value, key: &str, extra: &Value) {
    if let (Some(t), Some(e)) = (parent.get_mut(key).and_then(Value::as_object_mut), extra.as_object()) {
        for (k, v) in e {
            t.insert(k.clone(), v.clone());
        }
    }
}

/// Replace an `allOf` of object schemas (utoipa's form of `#[serde(flatten)]`) by
/// one object schema, so its properties can be constrained and so that a
/// flattened type with `additionalProperties: false` does not refuse its siblings.
fn flatten(schemas: &mut Value, name: &str) {
    let Some(parts) = schemas[name].get("allOf").and_then(Value::as_array).cloned() else { return };
    let mut properties = serde_json::Map::new();
    let mut required = Vec::new();
    for part in parts {
        let part = match part.get("$ref").and_then(Value::as_str) {
            Some(r) => schemas[r.trim_start_matches("#/components/schemas/")].clone(),
            None => part,
        };
        properties.extend(part["properties"].as_object().cloned().unwrap_or_default());
        required.extend(part["required"].as_array().cloned().unwrap_or_default());
    }
    let description = schemas[name]["description"].clone();
    schemas[name] =
        json!({"type": "object", "description": description, "properties": properties, "required": required});
}

/// Whether a JSON Schema holds a `$ref` anywhere.
fn mentions_ref(schema: &Value) -> bool {
    match schema {
        Value::Object(o) => o.contains_key("$ref") || o.values().any(mentions_ref),
        Value::Array(a) => a.iter().any(mentions_ref),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `merge` skips a key it does not find, so a renamed field would silently lose
    /// its constraint: check that the constraints land where clients read them.
    #[test]
    fn the_constraints_land_in_the_document() {
        let config = EngineConfig { embedding_dim: 8, ..EngineConfig::default() };
        let mut kinds = memhub_types::schema::builtin_kinds();
        let with_ref =
            json!({"type": "object", "$defs": {"x": {"type": "string"}}, "properties": {"a": {"$ref": "#/$defs/x"}}});
        kinds.push(KindSchema {
            kind: "ticket".into(),
            version: 2,
            description: String::new(),
            schema: with_ref,
            builtin: false,
        });
        kinds.push(KindSchema {
            kind: "ticket".into(),
            version: 1,
            description: String::new(),
            schema: json!({}),
            builtin: false,
        });
        let doc = document(&config, &kinds);
        let s = &doc["components"]["schemas"];
        let variants = s["NewMemory"]["anyOf"].as_array().unwrap();
        assert_eq!(variants.len(), kinds.len(), "one variant per kind and version");
        let first = &variants[0]["properties"];
        assert_eq!(first["embedding"]["minItems"], 8);
        assert_eq!(first["content"]["maxLength"], config.max_content_bytes / 4);
        assert_eq!(first["system_id"]["maxLength"], 256);
        assert_eq!(first["tags"]["maxItems"], 64);
        assert!(first["created_at"]["pattern"].is_string());
        let ticket = |v: u32| {
            variants
                .iter()
                .find(|x| {
                    x["properties"]["kind"]["const"] == "ticket"
                        && (x["properties"]["schema_version"]["const"] == v
                            || x["properties"]["schema_version"]["enum"][0] == v)
                })
                .unwrap()
        };
        assert!(!ticket(2).to_string().contains("#/$defs"), "a registered $ref never dangles in the document");
        assert_eq!(ticket(1)["required"], json!(["content", "kind", "schema_version"]), "an old version is named");
        assert_eq!(s["SearchRequest"]["properties"]["limit"]["maximum"], 1000);
        assert_eq!(s["SearchRequest"]["properties"]["query_embedding"]["maxItems"], 8);
        assert!(s["SearchRequest"]["properties"]["since"]["pattern"].is_string());
        assert_eq!(s["RetrieveRequest"]["properties"]["id"]["format"], "uuid");
        assert_eq!(s["BatchRequest"]["properties"]["memories"]["maxItems"], config.max_batch);
        assert_eq!(s["RegisterSchema"]["properties"]["version"]["maximum"], memhub_types::schema::MAX_VERSION);
        let list = &doc["paths"]["/v1/memories"]["get"];
        let limit = list["parameters"].as_array().unwrap().iter().find(|p| p["name"] == "limit").unwrap();
        assert_eq!((limit["in"].as_str(), limit["schema"]["minimum"].as_u64()), (Some("query"), Some(1)));
        assert!(list["responses"]["400"]["content"]["application/json"].is_object(), "errors are documented");
    }
}
