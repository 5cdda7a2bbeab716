//! The schema registry: every memory kind is a JSON Schema for its `attributes`,
//! with a version. Writes name a kind (and optionally a version) and are validated
//! against it; a failure names the field path. New kinds and versions can be
//! registered at run time; old versions stay valid for the memories that use them.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use crate::error::{Error, ErrorCode, Result};

/// One version of one kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct KindSchema {
    pub kind: String,
    pub version: u32,
    #[serde(default)]
    pub description: String,
    /// A JSON Schema (draft 2020-12 unless `$schema` says otherwise) for `attributes`.
    #[schema(value_type = Object)]
    pub schema: Value,
    /// Shipped with memhub rather than registered by an admin.
    #[serde(default)]
    pub builtin: bool,
}

struct Entry {
    schema: KindSchema,
    validator: Arc<jsonschema::Validator>,
}

/// The registered kinds. Cheap to clone (validators are shared).
#[derive(Clone, Default)]
pub struct SchemaRegistry {
    kinds: BTreeMap<String, BTreeMap<u32, Arc<Entry>>>,
}

impl std::fmt::Debug for SchemaRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.kinds.keys()).finish()
    }
}

fn string() -> Value {
    json!({"type": "string"})
}

fn strings() -> Value {
    json!({"type": "array", "items": {"type": "string"}})
}

fn object(required: &[&str], properties: Value) -> Value {
    json!({"type": "object", "required": required, "properties": properties, "additionalProperties": true})
}

/// The kinds every memhub knows, at version 1.
pub fn builtin_kinds() -> Vec<KindSchema> {
    let kind = |kind: &str, description: &str, schema: Value| KindSchema {
        kind: kind.into(),
        version: 1,
        description: description.into(),
        schema,
        builtin: true,
    };
    vec![
        kind(
            "chat",
            "One exchange of a chat: the user's message and the response.",
            object(
                &["user_id", "session_id", "message", "response", "topics"],
                json!({"user_id": string(), "session_id": string(), "message": string(), "response": string(),
                       "sentiment": {"type": ["string", "number"]}, "topics": strings()}),
            ),
        ),
        kind(
            "event",
            "Something that happened in a source system.",
            object(
                &["source", "event_type", "severity"],
                json!({"source": string(), "event_type": string(),
                       "severity": {"enum": ["debug", "info", "notice", "low", "medium", "warning", "high", "error", "critical"]}}),
            ),
        ),
        kind(
            "insight",
            "A conclusion drawn from other memories, with a confidence.",
            object(
                &["category", "confidence", "recommendations"],
                json!({"category": string(), "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                       "recommendations": strings()}),
            ),
        ),
        kind(
            "decision",
            "A decision, why it was taken and what else was considered.",
            object(
                &["decision", "alternatives", "status"],
                json!({"decision": string(), "rationale": string(), "alternatives": strings(),
                       "decided_by": string(),
                       "status": {"enum": ["proposed", "accepted", "rejected", "superseded", "deprecated"]}}),
            ),
        ),
        kind("context", "Background context for an agent or project.", object(&[], json!({}))),
        kind(
            "conversation",
            "A Session-Buddy conversation memory.",
            object(&[], json!({"category": string(), "importance_score": {"type": "number"}})),
        ),
        kind(
            "reflection",
            "A Session-Buddy reflection: an insight an agent recorded about its work.",
            object(
                &[],
                json!({"insight_type": string(), "confidence_score": {"type": "number"},
                       "related_entities": strings()}),
            ),
        ),
        kind("note", "Free-form text; the default kind.", object(&[], json!({}))),
    ]
}

/// The highest schema version a kind may have.
pub const MAX_VERSION: u32 = 1_000_000;

fn valid_kind_name(kind: &str) -> bool {
    let mut chars = kind.chars();
    matches!(chars.next(), Some('a'..='z'))
        && kind.len() <= 64
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
}

/// `/recommendations/0` -> `attributes.recommendations[0]`.
fn attribute_path(pointer: &str, extra: Option<&str>) -> String {
    let mut path = String::from("attributes");
    let segments = pointer.split('/').skip(1).filter(|s| !s.is_empty()).map(str::to_owned);
    for seg in segments.chain(extra.map(str::to_owned)) {
        if seg.chars().all(|c| c.is_ascii_digit()) {
            path.push_str(&format!("[{seg}]"));
        } else {
            path.push('.');
            path.push_str(&seg.replace("~1", "/").replace("~0", "~"));
        }
    }
    path
}

impl SchemaRegistry {
    /// A registry holding the built-in kinds.
    pub fn with_builtins() -> Self {
        let mut registry = SchemaRegistry::default();
        for schema in builtin_kinds() {
            registry.insert(schema).expect("built-in schemas compile");
        }
        registry
    }

    fn insert(&mut self, schema: KindSchema) -> Result<()> {
        let validator = jsonschema::validator_for(&schema.schema)
            .map_err(|e| Error::field(ErrorCode::InvalidSchema, "schema", format!("not a valid JSON Schema: {e}")))?;
        let entry = Arc::new(Entry { schema, validator: Arc::new(validator) });
        self.kinds.entry(entry.schema.kind.clone()).or_default().insert(entry.schema.version, entry);
        Ok(())
    }

    /// Check a schema for registration without adding it. Returns it with its
    /// version resolved (the next free version when none was given). Re-registering
    /// an identical version is allowed (idempotent); a different one is refused.
    pub fn prepare(
        &self,
        kind: &str,
        version: Option<u32>,
        description: String,
        schema: Value,
    ) -> Result<(KindSchema, bool)> {
        if !valid_kind_name(kind) {
            return Err(Error::field(
                ErrorCode::InvalidField,
                "kind",
                format!("{kind:?} is not a valid kind name: use 1-64 of a-z, 0-9, _ starting with a letter"),
            ));
        }
        if !schema.is_object() {
            return Err(Error::field(ErrorCode::InvalidSchema, "schema", "must be a JSON object"));
        }
        let versions = self.kinds.get(kind);
        if version.is_none() {
            // Registering the latest schema again is a no-op, not a new version.
            if let Some(latest) = versions.and_then(|v| v.values().next_back()).filter(|e| e.schema.schema == schema) {
                return Ok((latest.schema.clone(), false));
            }
        }
        // Without a version, the one after the latest (saturating: never an overflow).
        let given = version.is_some();
        let version =
            version.unwrap_or_else(|| versions.and_then(|v| v.keys().next_back()).map_or(1, |v| v.saturating_add(1)));
        if version == 0 {
            return Err(Error::field(ErrorCode::InvalidField, "version", "must be 1 or more"));
        }
        let candidate = KindSchema { kind: kind.into(), version, description, schema, builtin: false };
        if let Some(existing) = versions.and_then(|v| v.get(&version)) {
            return if existing.schema.schema == candidate.schema {
                Ok((existing.schema.clone(), false))
            } else {
                Err(Error::field(
                    ErrorCode::SchemaVersionExists,
                    "version",
                    format!("kind {kind:?} version {version} exists with a different schema; register a new version"),
                ))
            };
        }
        // Only new versions are capped: one stored before the cap still re-registers.
        if version > MAX_VERSION {
            return Err(if given {
                Error::field(ErrorCode::InvalidField, "version", format!("must be at most {MAX_VERSION}"))
            } else {
                // The kind's versions are used up: a conflict with its state, like a taken version.
                Error::field(
                    ErrorCode::SchemaVersionExists,
                    "version",
                    format!("kind {kind:?} has reached version {MAX_VERSION}; give a free version"),
                )
            });
        }
        jsonschema::validator_for(&candidate.schema)
            .map_err(|e| Error::field(ErrorCode::InvalidSchema, "schema", format!("not a valid JSON Schema: {e}")))?;
        Ok((candidate, true))
    }

    /// Add a schema that [`prepare`](Self::prepare) accepted (or one loaded from the store).
    pub fn add(&mut self, schema: KindSchema) -> Result<()> {
        self.insert(schema)
    }

    /// Every version of every kind, sorted by kind then version.
    pub fn list(&self) -> Vec<KindSchema> {
        self.kinds.values().flat_map(|v| v.values().map(|e| e.schema.clone())).collect()
    }

    /// Whether the kind is registered (any version).
    pub fn has_kind(&self, kind: &str) -> bool {
        self.kinds.contains_key(kind)
    }

    /// The latest version of a kind.
    pub fn latest(&self, kind: &str) -> Option<&KindSchema> {
        self.kinds.get(kind).and_then(|v| v.values().next_back()).map(|e| &e.schema)
    }

    /// Validate `attributes` against `kind` (at `version`, else the latest) and
    /// return the version used. The error names the first failing field path.
    pub fn validate(&self, kind: &str, version: Option<u32>, attributes: &Value) -> Result<u32> {
        let versions = self.kinds.get(kind).ok_or_else(|| {
            let known: Vec<&str> = self.kinds.keys().map(String::as_str).collect();
            Error::field(
                ErrorCode::UnknownKind,
                "kind",
                format!("unknown kind {kind:?}; registered kinds: {}", known.join(", ")),
            )
        })?;
        let entry = match version {
            Some(v) => versions.get(&v).ok_or_else(|| {
                Error::field(ErrorCode::UnknownKind, "schema_version", format!("kind {kind:?} has no version {v}"))
            })?,
            None => versions.values().next_back().expect("a registered kind has a version"),
        };
        if let Some(error) = entry.validator.iter_errors(attributes).next() {
            let extra = match error.kind() {
                jsonschema::error::ValidationErrorKind::Required { property } => property.as_str().map(str::to_owned),
                _ => None,
            };
            let path = attribute_path(error.instance_path().as_str(), extra.as_deref());
            return Err(Error::field(
                ErrorCode::SchemaValidationFailed,
                path,
                format!("{error} (kind {kind:?} version {})", entry.schema.version),
            ));
        }
        Ok(entry.schema.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_accept_valid_and_name_the_bad_field() {
        let r = SchemaRegistry::with_builtins();
        assert_eq!(r.validate("note", None, &json!({})).unwrap(), 1);
        let ok = json!({"category": "perf", "confidence": 0.8, "recommendations": ["cache it"]});
        assert_eq!(r.validate("insight", None, &ok).unwrap(), 1);

        let bad = json!({"category": "perf", "confidence": 1.5, "recommendations": []});
        let e = r.validate("insight", None, &bad).unwrap_err();
        assert_eq!(e.code, ErrorCode::SchemaValidationFailed);
        assert_eq!(e.field.as_deref(), Some("attributes.confidence"));

        let missing = json!({"confidence": 0.5, "recommendations": []});
        let e = r.validate("insight", None, &missing).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("attributes.category"));

        let nested = json!({"category": "x", "confidence": 0.5, "recommendations": ["a", 7]});
        let e = r.validate("insight", None, &nested).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("attributes.recommendations[1]"));
    }

    #[test]
    fn unknown_kind_and_version_are_refused() {
        let r = SchemaRegistry::with_builtins();
        assert_eq!(r.validate("nope", None, &json!({})).unwrap_err().code, ErrorCode::UnknownKind);
        let e = r.validate("note", Some(9), &json!({})).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("schema_version"));
    }

    #[test]
    fn new_versions_keep_old_ones_readable() {
        let mut r = SchemaRegistry::with_builtins();
        let v2 = json!({"type": "object", "required": ["ticket"], "properties": {"ticket": {"type": "string"}}});
        let (s, new) = r.prepare("note", None, "notes with tickets".into(), v2.clone()).unwrap();
        assert!(new);
        assert_eq!(s.version, 2);
        r.add(s).unwrap();
        assert_eq!(r.latest("note").unwrap().version, 2);
        assert!(r.validate("note", None, &json!({})).is_err());
        assert_eq!(r.validate("note", Some(1), &json!({})).unwrap(), 1);
        // Idempotent re-registration; a different schema under the same version is a conflict.
        assert!(!r.prepare("note", Some(2), String::new(), v2.clone()).unwrap().1);
        let (same, new) = r.prepare("note", None, String::new(), v2).unwrap();
        assert_eq!((same.version, new), (2, false));
        let e = r.prepare("note", Some(2), String::new(), json!({"type": "object"})).unwrap_err();
        assert_eq!(e.code, ErrorCode::SchemaVersionExists);
    }

    #[test]
    fn invalid_schemas_and_names_are_refused() {
        let r = SchemaRegistry::with_builtins();
        let e = r.prepare("ticket", None, String::new(), json!({"type": "no-such-type"})).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidSchema);
        let e = r.prepare("Bad Kind", None, String::new(), json!({})).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("kind"));
    }

    #[test]
    fn the_last_version_does_not_overflow() {
        let mut r = SchemaRegistry::with_builtins();
        let e = r.prepare("ticket", Some(u32::MAX), String::new(), json!({"type": "object"})).unwrap_err();
        assert_eq!((e.code, e.field.as_deref()), (ErrorCode::InvalidField, Some("version")));
        let (last, _) = r.prepare("ticket", Some(MAX_VERSION), String::new(), json!({"type": "object"})).unwrap();
        r.add(last).unwrap();
        // An explicit free version still registers; the one after the last is a clear error, not a panic.
        assert!(r.prepare("ticket", Some(2), String::new(), json!({"type": "object", "title": "t"})).unwrap().1);
        // A version stored above the cap (registered before there was one) still re-registers as itself.
        let old = KindSchema {
            kind: "legacy".into(),
            version: 20_260_101,
            description: String::new(),
            schema: json!({"type": "object"}),
            builtin: false,
        };
        r.add(old.clone()).unwrap();
        assert_eq!(
            r.prepare("legacy", Some(20_260_101), String::new(), json!({"type": "object"})).unwrap(),
            (old, false)
        );
        let e = r.prepare("ticket", None, String::new(), json!({"type": "object", "title": "u"})).unwrap_err();
        assert_eq!((e.code, e.field.as_deref()), (ErrorCode::SchemaVersionExists, Some("version")));
    }
}
