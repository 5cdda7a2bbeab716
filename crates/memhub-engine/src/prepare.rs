//! Turning what a client sent into a valid [`Memory`], or a field-naming error.
//! Nothing reaches the store without passing through here.

use memhub_types::memory::IngestionMethod;
use memhub_types::schema::SchemaRegistry;
use memhub_types::{Error, ErrorCode, Memory, NewMemory, Result, Tier, DEFAULT_SYSTEM_ID, DEFAULT_TENANT};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::EngineConfig;

/// A validated memory ready to be written. `created_at_given` says whether the
/// client chose the event time (if not, a re-push keeps the stored one).
#[derive(Clone)]
pub(crate) struct Prepared {
    pub memory: Memory,
    pub created_at_given: bool,
}

/// SHA-256 of the content, lowercase hex.
pub fn content_hash(content: &str) -> String {
    hex::encode(Sha256::digest(content.as_bytes()))
}

/// Whether two versions agree on everything a client controls: if so, a re-push
/// is a no-op. Server-side fields (id, times, version, method) do not count.
pub(crate) fn same_revision(a: &Memory, b: &Memory) -> bool {
    a.kind == b.kind
        && a.schema_version == b.schema_version
        && a.content == b.content
        && a.attributes == b.attributes
        && a.metadata == b.metadata
        && a.tags == b.tags
        && a.user_id == b.user_id
        && a.agent_id == b.agent_id
        && a.session_id == b.session_id
        && a.project == b.project
        && a.created_at == b.created_at
        && a.expires_at == b.expires_at
        && a.embedding == b.embedding
        && a.embedding_model == b.embedding_model
}

/// The limits a write is checked against, in characters unless said otherwise; the
/// OpenAPI document states the same numbers.
pub mod limits {
    /// `tenant`.
    pub const TENANT_CHARS: usize = 128;
    /// `system_id`.
    pub const SYSTEM_ID_CHARS: usize = 256;
    /// `memory_id`.
    pub const MEMORY_ID_CHARS: usize = 512;
    /// `user_id`, `agent_id`, `session_id`, `project`.
    pub const NAME_CHARS: usize = 256;
    /// `embedding_model`.
    pub const MODEL_CHARS: usize = 128;
    /// Tags on one memory.
    pub const TAGS: usize = 64;
    /// One tag.
    pub const TAG_CHARS: usize = 128;
    /// The most memories one list page or search returns.
    pub const PAGE: usize = 1000;
}

fn check_text(field: &str, value: &str, max_chars: usize) -> Result<()> {
    if value.is_empty() {
        return Err(Error::field(ErrorCode::InvalidField, field, "must not be empty"));
    }
    if value.chars().count() > max_chars {
        return Err(Error::field(ErrorCode::InvalidField, field, format!("longer than {max_chars} characters")));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::field(ErrorCode::InvalidField, field, "must not contain control characters"));
    }
    Ok(())
}

fn opt_text(field: &str, value: Option<String>) -> Result<Option<String>> {
    match value {
        Some(v) => check_text(field, &v, limits::NAME_CHARS).map(|_| Some(v)),
        None => Ok(None),
    }
}

/// Check an embedding's dimension and values.
pub(crate) fn check_embedding(field: &str, v: &[f32], dim: usize) -> Result<()> {
    if v.len() != dim {
        return Err(Error::field(
            ErrorCode::InvalidEmbeddingDimension,
            field,
            format!("expected {dim} floats, got {}", v.len()),
        ));
    }
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(Error::field(ErrorCode::InvalidField, format!("{field}[{i}]"), "must be a finite number"));
    }
    Ok(())
}

pub(crate) fn check_content(content: &str, max_bytes: usize) -> Result<()> {
    if content.trim().is_empty() {
        return Err(Error::field(ErrorCode::InvalidField, "content", "must not be empty"));
    }
    if content.len() > max_bytes {
        return Err(Error::field(
            ErrorCode::ContentTooLong,
            "content",
            format!("{} bytes is over the limit of {max_bytes} bytes", content.len()),
        ));
    }
    Ok(())
}

pub(crate) fn check_tags(tags: Vec<String>) -> Result<Vec<String>> {
    if tags.len() > limits::TAGS {
        return Err(Error::field(
            ErrorCode::InvalidField,
            "tags",
            format!("{} tags; at most {} are allowed", tags.len(), limits::TAGS),
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(tags.len());
    for (i, tag) in tags.into_iter().enumerate() {
        check_text(&format!("tags[{i}]"), &tag, limits::TAG_CHARS)?;
        if !out.contains(&tag) {
            out.push(tag);
        }
    }
    Ok(out)
}

pub(crate) fn check_attributes(attributes: Option<Value>) -> Result<Value> {
    match attributes {
        None | Some(Value::Null) => Ok(Value::Object(Map::new())),
        Some(v @ Value::Object(_)) => Ok(v),
        Some(_) => Err(Error::field(ErrorCode::InvalidField, "attributes", "must be a JSON object")),
    }
}

/// Deepest nesting accepted in `metadata` and `attributes`.
pub(crate) const MAX_JSON_DEPTH: usize = 16;

fn object_depth(m: &Map<String, Value>) -> usize {
    1 + m.values().map(depth).max().unwrap_or(0)
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Object(m) => object_depth(m),
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Bytes of `v` as compact JSON, counted without building the text.
fn json_len(v: &impl serde::Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut n = Count(0);
    serde_json::to_writer(&mut n, v).map_or(usize::MAX, |()| n.0)
}

/// Bound a free-form JSON object's nesting and size (a memory is not a document store).
pub(crate) fn check_json_shape(field: &str, v: &Map<String, Value>, max_bytes: usize) -> Result<()> {
    if object_depth(v) > MAX_JSON_DEPTH {
        return Err(Error::field(
            ErrorCode::InvalidField,
            field,
            format!("nested deeper than {MAX_JSON_DEPTH} levels"),
        ));
    }
    let size = json_len(v);
    if size > max_bytes {
        return Err(Error::field(
            ErrorCode::PayloadTooLarge,
            field,
            format!("{size} bytes of JSON; the limit is {max_bytes}"),
        ));
    }
    Ok(())
}

/// Validate a client's memory and build the record to store.
pub(crate) fn prepare(
    new: NewMemory,
    method: IngestionMethod,
    config: &EngineConfig,
    registry: &SchemaRegistry,
    now: i64,
) -> Result<Prepared> {
    let id = Uuid::now_v7();
    let tenant = new.tenant.unwrap_or_else(|| DEFAULT_TENANT.to_string());
    check_text("tenant", &tenant, limits::TENANT_CHARS)?;
    let system_id = new.system_id.unwrap_or_else(|| DEFAULT_SYSTEM_ID.to_string());
    check_text("system_id", &system_id, limits::SYSTEM_ID_CHARS)?;
    let memory_id = new.memory_id.unwrap_or_else(|| id.to_string());
    check_text("memory_id", &memory_id, limits::MEMORY_ID_CHARS)?;
    check_content(&new.content, config.max_content_bytes)?;
    let kind = new.kind.unwrap_or_else(|| "note".to_string());
    let attributes = check_attributes(new.attributes)?;
    if let Value::Object(a) = &attributes {
        check_json_shape("attributes", a, config.max_metadata_bytes)?;
    }
    let metadata = new.metadata.unwrap_or_default();
    check_json_shape("metadata", &metadata, config.max_metadata_bytes)?;
    let schema_version = registry.validate(&kind, new.schema_version, &attributes)?;
    let tags = check_tags(new.tags)?;
    if let Some(v) = &new.embedding {
        check_embedding("embedding", v, config.embedding_dim)?;
    }
    let embedding_model = match (&new.embedding, new.embedding_model) {
        (None, _) => None,
        (Some(_), Some(m)) => {
            check_text("embedding_model", &m, limits::MODEL_CHARS)?;
            Some(m)
        }
        (Some(_), None) => Some(config.embedding_model.clone()),
    };
    let memory = Memory {
        id,
        tenant,
        system_id,
        memory_id,
        kind,
        schema_version,
        content_hash: content_hash(&new.content),
        content: new.content,
        attributes,
        metadata,
        tags,
        user_id: opt_text("user_id", new.user_id)?,
        agent_id: opt_text("agent_id", new.agent_id)?,
        session_id: opt_text("session_id", new.session_id)?,
        project: opt_text("project", new.project)?,
        created_at: new.created_at.unwrap_or(now),
        ingested_at: now,
        updated_at: now,
        expires_at: new.expires_at,
        embedding: new.embedding,
        embedding_model,
        version: 1,
        ingestion_method: method,
        tier: Tier::Hot,
    };
    Ok(Prepared { memory, created_at_given: new.created_at.is_some() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> EngineConfig {
        EngineConfig { embedding_dim: 4, ..EngineConfig::default() }
    }

    fn new(content: &str) -> NewMemory {
        NewMemory { content: content.into(), ..Default::default() }
    }

    fn err(n: NewMemory) -> Error {
        match prepare(n, IngestionMethod::Rest, &config(), &SchemaRegistry::with_builtins(), 0) {
            Err(e) => e,
            Ok(_) => panic!("expected an error"),
        }
    }

    #[test]
    fn metadata_and_attributes_are_bounded() {
        let mut deep = serde_json::json!("leaf");
        for _ in 0..MAX_JSON_DEPTH {
            deep = serde_json::json!({ "x": deep });
        }
        let meta = |v: Value| NewMemory { metadata: v.as_object().cloned(), ..new("hi") };
        let e = err(meta(serde_json::json!({ "x": deep })));
        assert_eq!((e.code, e.field.as_deref()), (ErrorCode::InvalidField, Some("metadata")), "{e}");
        let e = err(NewMemory { attributes: Some(serde_json::json!({"a": deep, "b": 1})), ..new("hi") });
        assert_eq!(e.field.as_deref(), Some("attributes"));
        let big = "x".repeat(70 * 1024);
        let e = err(meta(serde_json::json!({ "blob": big })));
        assert_eq!((e.code, e.field.as_deref()), (ErrorCode::PayloadTooLarge, Some("metadata")));
        let ok = meta(serde_json::json!({"speaker": "ann", "nested": {"ok": [1, 2, 3]}}));
        assert!(prepare(ok, IngestionMethod::Rest, &config(), &SchemaRegistry::with_builtins(), 0).is_ok());
    }

    #[test]
    fn defaults_are_filled() {
        let p = prepare(new("hi"), IngestionMethod::Mcp, &config(), &SchemaRegistry::with_builtins(), 7).unwrap();
        let m = p.memory;
        assert_eq!((m.tenant.as_str(), m.system_id.as_str(), m.kind.as_str()), ("default", "unknown", "note"));
        assert_eq!(m.memory_id, m.id.to_string());
        assert_eq!((m.created_at, m.version), (7, 1));
        assert!(!p.created_at_given);
        assert_eq!(m.content_hash, content_hash("hi"));
    }

    #[test]
    fn bad_fields_are_named() {
        assert_eq!(err(new("  ")).field.as_deref(), Some("content"));
        let e = err(NewMemory { embedding: Some(vec![1.0; 3]), ..new("x") });
        assert_eq!((e.code, e.field.as_deref()), (ErrorCode::InvalidEmbeddingDimension, Some("embedding")));
        let e = err(NewMemory { embedding: Some(vec![1.0, f32::NAN, 0.0, 0.0]), ..new("x") });
        assert_eq!(e.field.as_deref(), Some("embedding[1]"));
        let e = err(NewMemory { tags: vec!["ok".into(), "".into()], ..new("x") });
        assert_eq!(e.field.as_deref(), Some("tags[1]"));
        let e = err(NewMemory { kind: Some("insight".into()), ..new("x") });
        assert_eq!(e.code, ErrorCode::SchemaValidationFailed);
        let e = err(NewMemory { attributes: Some(serde_json::json!([1])), ..new("x") });
        assert_eq!(e.field.as_deref(), Some("attributes"));
        let e = err(NewMemory { system_id: Some("a\nb".into()), ..new("x") });
        assert_eq!(e.field.as_deref(), Some("system_id"));
        let e = err(new(&"x".repeat(config().max_content_bytes + 1)));
        assert_eq!(e.code, ErrorCode::ContentTooLong);
    }

    #[test]
    fn same_revision_compares_every_client_field_and_no_server_field() {
        let p = prepare(new("hi"), IngestionMethod::Mcp, &config(), &SchemaRegistry::with_builtins(), 7).unwrap();
        let base = p.memory;
        let mut m = base.clone();
        m.ingested_at += 1;
        m.updated_at += 1;
        m.version += 1;
        m.id = Uuid::now_v7();
        m.ingestion_method = IngestionMethod::Rest;
        assert!(same_revision(&base, &m), "server-side fields do not count");
        let changes: [fn(&mut Memory); 8] = [
            |m| m.content.push('!'),
            |m| {
                m.metadata.insert("k".into(), Value::Bool(true));
            },
            |m| m.tags.push("t".into()),
            |m| m.embedding = Some(vec![0.0; 4]),
            |m| m.session_id = Some("s".into()),
            |m| m.created_at += 1,
            |m| m.expires_at = Some(1),
            |m| m.attributes = serde_json::json!({"a": 1}),
        ];
        for change in changes {
            let mut m = base.clone();
            change(&mut m);
            assert!(!same_revision(&base, &m), "{m:?}");
        }
    }
}
