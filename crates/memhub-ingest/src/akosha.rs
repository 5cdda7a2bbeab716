//! Akosha's upload layout: `manifest.json` (`uploaded_at`, `conversation_count`,
//! `version`, `compressed`, `compression_format` gzip|zstd|lz4, `files`, `checksum`)
//! next to `memories.json` = `{"conversations": [{id, content, embedding, timestamp,
//! source, metadata}]}`, compressed as the manifest says.

use std::path::Path;

use memhub_types::time::parse_timestamp;
use memhub_types::NewMemory;
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

/// Read an Akosha `memories.json` (compressed as `manifest` says; the magic bytes
/// must agree) into rows for `system_id`. Vectors that are not `dim`-dimensional
/// are dropped (the server embeds those memories when it has an encoder).
pub fn read(path: &Path, manifest: &Manifest, system_id: &str, dim: usize) -> Result<Vec<Row>, String> {
    let declared = verify(path, Some(manifest.compression()?), manifest.checksum.as_deref())
        .map_err(|e| format!("memories file: {e}"))?;
    let parsed: Memories =
        serde_json::from_reader(std::io::BufReader::new(reader(path, declared).map_err(|e| e.to_string())?))
            .map_err(|e| format!("memories file: {e}"))?;
    let mut rows = Vec::with_capacity(parsed.conversations.len());
    for (i, raw) in parsed.conversations.into_iter().enumerate() {
        let hash = hex::encode(Sha256::digest(raw.to_string().as_bytes()));
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
        let text = |k: &str| metadata.get(k).and_then(Value::as_str).map(String::from);
        let memory = NewMemory {
            system_id: Some(system_id.to_string()),
            memory_id: Some(id.clone()),
            kind: Some(text("type").unwrap_or_else(|| "conversation".into())),
            content: c.content,
            user_id: text("user_id"),
            session_id: text("session_id"),
            project: text("project"),
            created_at: c.timestamp.as_deref().and_then(parse_timestamp),
            embedding: c.embedding.filter(|v| v.len() == dim),
            metadata: Some(metadata),
            ..Default::default()
        };
        rows.push(Row { source: Source::Akosha, row_id: id, hash, memory });
    }
    Ok(rows)
}
