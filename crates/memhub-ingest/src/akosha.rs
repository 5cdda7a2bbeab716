//! Akosha's upload layout: `manifest.json` (`uploaded_at`, `conversation_count`,
//! `version`, `compressed`, `compression_format` gzip|zstd|lz4, `files`, `checksum`)
//! next to `memories.json` = `{"conversations": [{id, content, embedding, timestamp,
//! source, metadata}]}`, compressed as the manifest says.

use std::path::Path;

use memhub_engine::Engine;
use memhub_types::time::parse_timestamp;
use memhub_types::{Error, ErrorCode, KindSchema, NewMemory, DEFAULT_SYSTEM_ID};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::decode::{reader, verify, Compression};
use crate::{Row, Source};

/// Akosha's `manifest.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    #[serde(default)]
    pub uploaded_at: Option<String>,
    #[serde(default)]
    pub conversation_count: Option<u64>,
    #[serde(default)]
    pub version: Option<Value>,
    #[serde(default)]
    pub compressed: bool,
    #[serde(default)]
    pub compression_format: Option<String>,
    #[serde(default)]
    pub files: Vec<Value>,
    #[serde(default)]
    pub checksum: Option<String>,
}

impl Manifest {
    /// The memories file's name (from `files`, else `memories.json`).
    pub fn memories_file(&self) -> String {
        self.files
            .iter()
            .filter_map(|f| match f {
                Value::String(s) => Some(s.as_str()),
                Value::Object(o) => o.get("name").or_else(|| o.get("path")).and_then(Value::as_str),
                _ => None,
            })
            .map(|s| s.rsplit('/').next().unwrap_or(s))
            .find(|s| s.starts_with("memories"))
            .unwrap_or("memories.json")
            .to_string()
    }

    /// How the memories file is compressed, per the manifest.
    pub fn compression(&self) -> Result<Compression, String> {
        if !self.compressed {
            return Ok(Compression::None);
        }
        let name = self.compression_format.as_deref().unwrap_or("gzip");
        Compression::named(name)
            .ok_or_else(|| format!("manifest: unknown compression_format {name:?} (gzip, zstd or lz4)"))
    }
}

#[derive(Deserialize)]
struct Memories {
    conversations: Vec<Value>,
}

#[derive(Deserialize)]
struct Conversation {
    id: Value,
    content: String,
    #[serde(default)]
    embedding: Option<Vec<f32>>,
    #[serde(default)]
    timestamp: Option<String>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
}

/// One Akosha memory as either path receives it: a `store_memory` /
/// `batch_store_memories` call (`{memory_id, text, embedding, metadata}`) or a
/// conversation of an uploaded `memories.json` (`{id, content, embedding,
/// timestamp, source, metadata}`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AkoshaMemory {
    pub id: String,
    pub text: String,
    pub embedding: Option<Vec<f32>>,
    /// The event time of an upload's conversation; a pushed memory carries it in
    /// `metadata.created_at` instead (either may be given; `timestamp` wins).
    pub timestamp: Option<String>,
    pub metadata: Map<String, Value>,
}

/// The kind an Akosha memory is stored as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KindRule<'a> {
    /// From `metadata.type` (see [`to_memory`]).
    FromMetadata,
    /// Always this kind (Session-Buddy's `store_reflection` stores reflections).
    Always(&'a str),
}

/// The kind of an Akosha memory whose `metadata.type` is absent: `note`, what
/// `store_memory` has always stored such a memory as (retention policies, filters and
/// key scopes on `note` keep covering those pushes).
pub const DEFAULT_KIND: &str = "note";

/// The one mapping of an Akosha memory to a memhub memory, used by the push tools
/// (`store_memory`, `batch_store_memories`, `store_reflection`) and by the pull
/// worker's Akosha uploads alike, so a memory is stored the same whichever way it
/// arrives:
///
/// - `system_id`: the upload's system folder when pulled (`system`), else
///   `metadata.source`, else `unknown`. An upload's `source` field is kept as
///   `metadata.source` when the metadata has none.
/// - `kind`: `metadata.type` when it names a registered kind whose schema the
///   metadata satisfies (its declared keys become `attributes`); no type is
///   [`DEFAULT_KIND`]; `session_memory` (Akosha's generic type), an unknown type, or
///   a kind whose required fields are missing is `note`. `metadata` is kept whole,
///   `type` included, so nothing is lost.
/// - `created_at`: `timestamp`, else `metadata.created_at` (ISO-8601; anything else
///   is an `invalid_field` error naming the field, never a silently dropped time).
/// - `tags` (an array of strings), `user_id`, `agent_id`, `session_id`, `project`
///   and `embedding_model` come from `metadata`.
pub fn to_memory(
    engine: &Engine,
    m: AkoshaMemory,
    system: Option<&str>,
    rule: KindRule<'_>,
) -> Result<NewMemory, Error> {
    let metadata = m.metadata;
    let time = |field: &str, v: Option<&Value>| -> Result<Option<i64>, Error> {
        match v {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => parse_timestamp(s)
                .map(Some)
                .ok_or_else(|| Error::field(ErrorCode::InvalidField, field, format!("{s:?} is not an ISO-8601 time"))),
            Some(_) => Err(Error::field(ErrorCode::InvalidField, field, "must be an ISO-8601 string")),
        }
    };
    let created_at = match &m.timestamp {
        Some(t) => time("timestamp", Some(&Value::String(t.clone())))?,
        None => time("metadata.created_at", metadata.get("created_at"))?,
    };
    let (kind, attributes) = match rule {
        KindRule::Always(kind) => {
            let schema = engine.latest_schema(kind);
            (kind.to_string(), schema.map(|s| declared_attributes(&s, &metadata)).unwrap_or_default())
        }
        KindRule::FromMetadata => kind_from_type(engine, &metadata),
    };
    let text = |key: &str| crate::meta_text(&metadata, key);
    let tags = metadata.get("tags").map(crate::strings).unwrap_or_default();
    Ok(NewMemory {
        tenant: None,
        system_id: Some(
            system.map(str::to_owned).or_else(|| text("source")).unwrap_or_else(|| DEFAULT_SYSTEM_ID.into()),
        ),
        memory_id: Some(m.id),
        kind: Some(kind),
        schema_version: None,
        content: m.text,
        attributes: Some(Value::Object(attributes)),
        user_id: text("user_id"),
        agent_id: text("agent_id"),
        session_id: text("session_id"),
        project: text("project"),
        tags,
        created_at,
        expires_at: None,
        embedding: m.embedding,
        embedding_model: text("embedding_model"),
        metadata: Some(metadata),
    })
}

/// The metadata keys a kind's schema declares: its typed attributes.
fn declared_attributes(schema: &KindSchema, metadata: &Map<String, Value>) -> Map<String, Value> {
    let Some(declared) = schema.schema.get("properties").and_then(Value::as_object) else { return Map::new() };
    metadata.iter().filter(|(k, _)| declared.contains_key(*k)).map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// `metadata.type` as a kind and its attributes (see [`to_memory`]).
fn kind_from_type(engine: &Engine, metadata: &Map<String, Value>) -> (String, Map<String, Value>) {
    let kind = match metadata.get("type").and_then(Value::as_str) {
        None => DEFAULT_KIND,
        Some("session_memory") => return ("note".into(), Map::new()),
        Some(t) => t,
    };
    // One lookup serves both questions: is the kind registered, and what does it declare.
    let Some(schema) = engine.latest_schema(kind) else { return ("note".into(), Map::new()) };
    let attributes = declared_attributes(&schema, metadata);
    // Akosha clients cannot send typed attributes: a kind whose required fields are
    // not in the metadata is kept as a note rather than refused.
    match engine.validate_attributes(kind, None, &Value::Object(attributes.clone())) {
        Ok(_) => (kind.to_string(), attributes),
        Err(e) => {
            tracing::debug!(kind, error = %e, "metadata.type names a kind whose fields are missing; storing as note");
            ("note".into(), Map::new())
        }
    }
}

/// Read an Akosha `memories.json` (compressed as `manifest` says; the magic bytes
/// must agree) into rows for `system_id`, mapped by [`to_memory`]; a conversation
/// the mapping refuses is a row carrying its error. Vectors that are not
/// `dim`-dimensional are dropped (the server embeds those memories when it has an
/// encoder) rather than refusing the row: an upload is a whole file a person
/// cannot fix row by row.
pub fn read(path: &Path, manifest: &Manifest, system_id: &str, engine: &Engine) -> Result<Vec<Row>, String> {
    let dim = engine.config().embedding_dim;
    let declared = verify(path, Some(manifest.compression()?), manifest.checksum.as_deref())
        .map_err(|e| format!("memories file: {e}"))?;
    let parsed: Memories =
        serde_json::from_reader(std::io::BufReader::new(reader(path, declared).map_err(|e| e.to_string())?))
            .map_err(|e| format!("memories file: {e}"))?;
    let mut rows = Vec::with_capacity(parsed.conversations.len());
    for (i, raw) in parsed.conversations.into_iter().enumerate() {
        let hash = row_hash(&raw);
        let c: Conversation =
            serde_json::from_value(raw).map_err(|e| format!("memories file: conversations[{i}]: {e}"))?;
        let id = match c.id {
            Value::String(s) => s,
            other => other.to_string(),
        };
        let mut metadata = c.metadata.unwrap_or_default();
        if let Some(source) = c.source {
            metadata.entry("source").or_insert(Value::String(source));
        }
        let memory = AkoshaMemory {
            id: id.clone(),
            text: c.content,
            embedding: c.embedding.filter(|v| v.len() == dim),
            timestamp: c.timestamp,
            metadata,
        };
        let memory = to_memory(engine, memory, Some(system_id), KindRule::FromMetadata);
        rows.push(Row { source: Source::Akosha, row_id: id, hash, memory });
    }
    Ok(rows)
}

/// A conversation's hash for the ledger: its JSON and the mapping version.
fn row_hash(raw: &Value) -> String {
    let mut h = Sha256::new();
    h.update(raw.to_string().as_bytes());
    h.update(crate::MAPPING_VERSION.to_le_bytes());
    hex::encode(h.finalize())
}
