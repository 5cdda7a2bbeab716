//! Session-Buddy's upload layout (layout 2):
//! `{root}/{system_id}/uploads/{upload_id}/` holding `reflection.duckdb`,
//! `knowledge_graph.duckdb` (each gzip-compressed whole under the same name) and
//! `manifest.json`, written last, which marks the upload complete:
//! `{"upload_id","system_id","timestamp","files":[{"name","path","size_bytes","compression","checksum"}],"metadata":{"uploader","version"}}`.
//! The worker reads it; `memhub sync` writes it.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The database files an upload may hold, in the order they are ingested.
pub const FILES: [&str; 2] = ["reflection.duckdb", "knowledge_graph.duckdb"];

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub upload_id: String,
    pub system_id: String,
    /// When the upload was made (RFC 3339).
    pub timestamp: String,
    pub files: Vec<ManifestFile>,
    #[serde(default)]
    pub metadata: Value,
}

/// One file of an upload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// The file's name in the upload folder.
    pub name: String,
    /// Its key in the bucket.
    #[serde(default)]
    pub path: Option<String>,
    /// Its size as uploaded.
    #[serde(default)]
    pub size_bytes: Option<u64>,
    /// `gzip` or `none`.
    #[serde(default)]
    pub compression: Option<String>,
    /// Hex sha256, of the file as uploaded or of its uncompressed bytes.
    #[serde(default)]
    pub checksum: Option<String>,
}

impl Manifest {
    /// Parse and check a manifest found at `{system_id}/uploads/{upload_id}/`.
    pub fn parse(bytes: &[u8], system_id: &str, upload_id: &str) -> Result<Manifest, String> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| format!("manifest.json: {e}"))?;
        if m.system_id != system_id {
            return Err(format!(
                "manifest.json: system_id {:?} does not match the upload's folder {system_id:?}",
                m.system_id
            ));
        }
        if m.upload_id != upload_id {
            return Err(format!(
                "manifest.json: upload_id {:?} does not match the upload's folder {upload_id:?}",
                m.upload_id
            ));
        }
        for f in &m.files {
            if !FILES.contains(&f.name.as_str()) {
                return Err(format!("manifest.json: unknown file {:?} (expected one of {FILES:?})", f.name));
            }
        }
        if m.files.is_empty() {
            return Err("manifest.json: files is empty".into());
        }
        Ok(m)
    }
}

/// Session-Buddy's upload id for a time: `YYYYMMDD_HHMMSS_{system_id}`.
pub fn upload_id(at: chrono::DateTime<chrono::Utc>, system_id: &str) -> String {
    format!("{}_{system_id}", at.format("%Y%m%d_%H%M%S"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_must_match_its_folder_and_name_known_files() {
        let json = |system: &str, file: &str| {
            serde_json::json!({
                "upload_id": "20261121_101500_mac.local", "system_id": system, "timestamp": "2026-11-21T10:15:00Z",
                "files": [{"name": file, "path": "x", "size_bytes": 10, "compression": "gzip", "checksum": "ab"}],
                "metadata": {"uploader": "session-buddy", "version": "0.10.4"}
            })
            .to_string()
        };
        let ok = Manifest::parse(
            json("mac.local", "reflection.duckdb").as_bytes(),
            "mac.local",
            "20261121_101500_mac.local",
        )
        .unwrap();
        assert_eq!(ok.files[0].compression.as_deref(), Some("gzip"));
        let other =
            Manifest::parse(json("evil", "reflection.duckdb").as_bytes(), "mac.local", "20261121_101500_mac.local");
        assert!(other.unwrap_err().contains("does not match"));
        let file = Manifest::parse(json("mac.local", "../x").as_bytes(), "mac.local", "20261121_101500_mac.local");
        assert!(file.unwrap_err().contains("unknown file"));
        let at = chrono::DateTime::parse_from_rfc3339("2026-11-21T10:15:00Z").unwrap().to_utc();
        assert_eq!(upload_id(at, "mac.local"), "20261121_101500_mac.local");
    }
}
