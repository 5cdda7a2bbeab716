//! Which uploads a bucket listing holds. Three layouts are accepted, under a root
//! prefix (default `systems/`):
//!
//! 1. the seed's: `{root}/{system_id}/reflection.duckdb` (overwritten in place);
//! 2. Session-Buddy's: `{root}/{system_id}/uploads/{upload_id}/reflection.duckdb`,
//!    `knowledge_graph.duckdb`, `manifest.json` (the manifest marks it complete);
//! 3. Akosha's: `{root}/{system_id}/{upload_id}/manifest.json` + `memories.json`.

use memhub_objects::ObjectInfo;

/// The shape of an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `reflection.duckdb` directly under the system.
    Seed,
    /// Session-Buddy: DuckDB files and a manifest in `uploads/{upload_id}/`.
    SessionBuddy,
    /// Akosha: `manifest.json` and `memories.json` in `{upload_id}/`.
    Akosha,
}

impl Layout {
    /// Its name in the ledger and the status.
    pub fn as_str(self) -> &'static str {
        match self {
            Layout::Seed => "seed",
            Layout::SessionBuddy => "session_buddy",
            Layout::Akosha => "akosha",
        }
    }
}

/// One upload to ingest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    pub layout: Layout,
    pub system_id: String,
    pub upload_id: Option<String>,
    /// The object whose identity (ETag, size) says whether the upload changed: the
    /// database for the seed's layout, the manifest for the others. The ledger's key.
    pub key: String,
    pub etag: Option<String>,
    pub size: u64,
    /// The upload's folder (keys of its files start with it).
    pub dir: String,
}

/// Why a system id is refused, if it is. Hostnames such as `mac.local` are fine.
pub fn check_system_id(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 255 {
        return Err("must be 1 to 255 characters".into());
    }
    if s == "." || s == ".." || s.contains("..") {
        return Err("must not contain \"..\"".into());
    }
    match s.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        Some(c) => Err(format!("character {c:?} is not allowed (use A-Z a-z 0-9 . _ -)")),
        None => Ok(()),
    }
}

/// The uploads in a listing of `root`, and the keys refused with the reason.
pub fn find_uploads(objects: &[ObjectInfo], root: &str) -> (Vec<Upload>, Vec<(String, String)>) {
    let root = root.trim_matches('/');
    let mut uploads = Vec::new();
    let mut refused = Vec::new();
    for o in objects {
        let Some(rest) = o.key.strip_prefix(root).and_then(|r| r.strip_prefix('/')) else { continue };
        let parts: Vec<&str> = rest.split('/').collect();
        let found = match parts.as_slice() {
            [system, "reflection.duckdb"] => Some((Layout::Seed, *system, None)),
            [system, "uploads", upload, "manifest.json"] => Some((Layout::SessionBuddy, *system, Some(*upload))),
            [system, upload, "manifest.json"] if *upload != "uploads" => Some((Layout::Akosha, *system, Some(*upload))),
            _ => None,
        };
        let Some((layout, system, upload)) = found else { continue };
        if let Err(why) = check_system_id(system) {
            refused.push((o.key.clone(), format!("system id {system:?} refused: {why}")));
            continue;
        }
        if let Some(Err(why)) = upload.map(check_system_id) {
            refused.push((o.key.clone(), format!("upload id {:?} refused: {why}", upload.unwrap_or_default())));
            continue;
        }
        let dir = o.key.rsplit_once('/').map_or(String::new(), |(d, _)| d.to_string());
        uploads.push(Upload {
            layout,
            system_id: system.to_string(),
            upload_id: upload.map(String::from),
            key: o.key.clone(),
            etag: o.etag.clone(),
            size: o.size,
            dir,
        });
    }
    // Oldest upload first within a system (upload ids start with a timestamp).
    uploads.sort_by(|a, b| (&a.system_id, &a.upload_id, &a.key).cmp(&(&b.system_id, &b.upload_id, &b.key)));
    (uploads, refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(key: &str) -> ObjectInfo {
        ObjectInfo { key: key.into(), size: 10, etag: Some("e".into()), modified: 0 }
    }

    #[test]
    fn the_three_layouts_are_recognised_and_bad_ids_refused() {
        let objects: Vec<ObjectInfo> = [
            "systems/mac.local/reflection.duckdb",
            "systems/mac.local/uploads/20261121_101500_mac.local/reflection.duckdb",
            "systems/mac.local/uploads/20261121_101500_mac.local/knowledge_graph.duckdb",
            "systems/mac.local/uploads/20261121_101500_mac.local/manifest.json",
            "systems/akosha-1/u42/manifest.json",
            "systems/akosha-1/u42/memories.json",
            "systems/bad host/reflection.duckdb",
            "systems/a..b/u1/manifest.json",
            "other/x/reflection.duckdb",
            "systems/mac.local/notes.txt",
        ]
        .iter()
        .map(|k| obj(k))
        .collect();
        let (uploads, refused) = find_uploads(&objects, "systems/");
        let found: Vec<(Layout, &str, Option<&str>)> =
            uploads.iter().map(|u| (u.layout, u.system_id.as_str(), u.upload_id.as_deref())).collect();
        assert_eq!(
            found,
            vec![
                (Layout::Akosha, "akosha-1", Some("u42")),
                (Layout::Seed, "mac.local", None),
                (Layout::SessionBuddy, "mac.local", Some("20261121_101500_mac.local")),
            ]
        );
        assert_eq!(uploads[2].dir, "systems/mac.local/uploads/20261121_101500_mac.local");
        assert_eq!(refused.len(), 2, "{refused:?}");
        assert!(refused[0].1.contains("' '"), "{refused:?}");
        assert!(refused[1].1.contains(".."), "{refused:?}");
    }

    #[test]
    fn system_ids_allow_hostnames_only() {
        for ok in ["mac.local", "host-1_a", "A.b.C"] {
            assert!(check_system_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a\\b", "x..y", "späti", "a b", "%2e%2e"] {
            assert!(check_system_id(bad).is_err(), "{bad}");
        }
    }
}
