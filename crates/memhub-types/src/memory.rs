//! The memory data model: what clients send ([`NewMemory`]), what the store keeps
//! ([`Memory`]), and the shapes of filters and searches.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::time::{serde_micros, Micros};

/// Tenant used when a request names none.
pub const DEFAULT_TENANT: &str = "default";
/// System id used by the MCP tools when `metadata.source` is absent.
pub const DEFAULT_SYSTEM_ID: &str = "unknown";

/// How a memory reached the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum IngestionMethod {
    HttpPush,
    Mcp,
    Rest,
    CloudPull,
    Webhook,
    Import,
}

impl IngestionMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            IngestionMethod::HttpPush => "http_push",
            IngestionMethod::Mcp => "mcp",
            IngestionMethod::Rest => "rest",
            IngestionMethod::CloudPull => "cloud_pull",
            IngestionMethod::Webhook => "webhook",
            IngestionMethod::Import => "import",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "http_push" => IngestionMethod::HttpPush,
            "mcp" => IngestionMethod::Mcp,
            "rest" => IngestionMethod::Rest,
            "cloud_pull" => IngestionMethod::CloudPull,
            "webhook" => IngestionMethod::Webhook,
            "import" => IngestionMethod::Import,
            _ => return None,
        })
    }
}

/// A memory as stored: the single source of truth that every index derives from.
/// Where a memory lives. Memories age from hot to warm to cold by `created_at`
/// (boundaries per kind, `tiers` in the engine config); a memory is in exactly one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// Recent: full-precision vectors in the in-memory graph, BM25.
    #[default]
    Hot,
    /// Older: content in the store, vectors in an int8 graph, BM25; searched by default.
    Warm,
    /// Oldest: Parquet files in object storage; searched on request (`include_cold`).
    Cold,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Hot, Tier::Warm, Tier::Cold];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Hot => "hot",
            Tier::Warm => "warm",
            Tier::Cold => "cold",
        }
    }

    pub fn parse(s: &str) -> Option<Tier> {
        Tier::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Memory {
    /// Server id (UUIDv7, time-ordered).
    pub id: Uuid,
    pub tenant: String,
    /// The source system (e.g. `slack`, `session-buddy@host`).
    pub system_id: String,
    /// The client's id, unique within `(tenant, system_id)`.
    pub memory_id: String,
    pub kind: String,
    pub schema_version: u32,
    pub content: String,
    /// Kind-specific typed payload, validated against the kind's JSON Schema.
    #[schema(value_type = Object)]
    pub attributes: Value,
    /// Free-form client metadata, kept whole.
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Event time from the client.
    #[serde(with = "serde_micros")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Micros,
    #[serde(with = "serde_micros")]
    #[schema(value_type = String, format = DateTime)]
    pub ingested_at: Micros,
    #[serde(with = "serde_micros")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Micros,
    #[serde(default, with = "serde_micros::option", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Micros>,
    /// Omitted from list and search responses unless asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<Vec<f32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_model: Option<String>,
    /// SHA-256 of `content`, lowercase hex.
    pub content_hash: String,
    /// 1 for the first write; +1 for every change.
    pub version: u32,
    pub ingestion_method: IngestionMethod,
    /// Which tier holds it (set by the server; writes land in hot).
    #[serde(default)]
    pub tier: Tier,
}

/// A memory as a client submits it. Only `content` is required.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMemory {
    /// Defaults to `default`.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Defaults to `unknown`.
    #[serde(default)]
    pub system_id: Option<String>,
    /// Defaults to the server id, so the write is not idempotent.
    #[serde(default)]
    pub memory_id: Option<String>,
    /// A registered kind; defaults to `note`.
    #[serde(default)]
    pub kind: Option<String>,
    /// Defaults to the kind's latest version.
    #[serde(default, deserialize_with = "whole::option")]
    pub schema_version: Option<u32>,
    pub content: String,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub attributes: Option<Value>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub agent_id: Option<String>,
    #[serde(default)]
    pub session_id: Option<String>,
    #[serde(default)]
    pub project: Option<String>,
    /// Event time; defaults to now.
    #[serde(default, with = "serde_micros::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub created_at: Option<Micros>,
    #[serde(default, with = "serde_micros::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Micros>,
    /// Must have the configured dimension (384 by default).
    #[serde(default)]
    pub embedding: Option<Vec<f32>>,
    /// The model that produced `embedding`; defaults to the configured model name.
    #[serde(default)]
    pub embedding_model: Option<String>,
}

/// A partial update (`PATCH /v1/memories/{id}`). Absent fields stay as they are; a
/// change produces a new version and keeps the old one in history.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemoryPatch {
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub attributes: Option<Value>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    #[serde(default, with = "serde_micros::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Micros>,
    #[serde(default)]
    pub embedding: Option<Vec<f32>>,
    #[serde(default)]
    pub embedding_model: Option<String>,
}

/// What a store call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StoreOutcome {
    /// A new `(tenant, system_id, memory_id)`.
    Created,
    /// The key existed with other content: a new version, the old one kept in history.
    Updated,
    /// The key existed with the same content: nothing was written.
    Unchanged,
}

/// The result of a store: what happened and the memory as it now is.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub outcome: StoreOutcome,
    pub memory: Memory,
}

/// One failed item of a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BatchItemError {
    pub index: usize,
    pub memory_id: Option<String>,
    pub code: String,
    pub error: String,
}

/// Filters shared by list and search. All given filters must hold (AND).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MemoryFilter {
    #[serde(default)]
    pub system_id: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub agent_id: Option<String>,
    #[serde(default)]
    pub session_id: Option<String>,
    #[serde(default)]
    pub project: Option<String>,
    /// The memory has at least one of these tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The memory has all of these tags.
    #[serde(default)]
    pub tags_all: Vec<String>,
    /// `created_at >= since`.
    #[serde(default, with = "serde_micros::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub since: Option<Micros>,
    /// `created_at < until`.
    #[serde(default, with = "serde_micros::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub until: Option<Micros>,
    /// Equality on top-level metadata keys, e.g. `{"speaker": "Caroline"}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
}

/// A search: text, a query vector, or both, within filters.
impl MemoryFilter {
    /// Whether `m` matches every set field: the row-by-row form of the filter, for
    /// data outside the indexes (cold Parquet files). Expiry is the caller's check.
    pub fn matches(&self, m: &Memory) -> bool {
        let eq = |want: &Option<String>, have: Option<&str>| want.as_deref().is_none_or(|w| have == Some(w));
        eq(&self.system_id, Some(&m.system_id))
            && eq(&self.kind, Some(&m.kind))
            && eq(&self.user_id, m.user_id.as_deref())
            && eq(&self.agent_id, m.agent_id.as_deref())
            && eq(&self.session_id, m.session_id.as_deref())
            && eq(&self.project, m.project.as_deref())
            && (self.tags.is_empty() || self.tags.iter().any(|t| m.tags.contains(t)))
            && self.tags_all.iter().all(|t| m.tags.contains(t))
            && self.since.is_none_or(|s| m.created_at >= s)
            && self.until.is_none_or(|u| m.created_at < u)
            && self.metadata.as_ref().is_none_or(|want| {
                want.iter().all(|(k, v)| !(v.is_object() || v.is_array()) && m.metadata.get(k) == Some(v))
            })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SearchRequest {
    #[serde(default)]
    pub query: String,
    /// A query vector (same dimension and model as the stored ones).
    #[serde(default, alias = "vector")]
    pub query_embedding: Option<Vec<f32>>,
    /// Defaults to 10; at most 1000.
    #[serde(default, deserialize_with = "whole::option")]
    pub limit: Option<usize>,
    /// 0 = keyword only, 1 = vector only; default 0.3 (the keyword retriever weighs more).
    #[serde(default)]
    pub semantic_ratio: Option<f32>,
    /// Drop hits whose `similarity` is below this (0..1).
    #[serde(default, alias = "threshold")]
    pub min_score: Option<f32>,
    /// Include each hit's embedding in the response.
    #[serde(default)]
    pub include_embedding: bool,
    /// Favour recent memories: each hit's score is multiplied by
    /// `0.5^(age / half_life)` (age from `created_at`). Seconds, or a string such as
    /// `"90s"`, `"30m"`, `"12h"`, `"7d"`, `"2w"`.
    #[serde(default, with = "half_life")]
    #[schema(value_type = Option<String>)]
    pub recency_half_life: Option<f64>,
    /// The tiers to search; default hot and warm (plus cold with `include_cold`).
    #[serde(default)]
    pub tiers: Option<Vec<Tier>>,
    /// Also scan the cold tier's Parquet files that the filters allow (slower).
    #[serde(default)]
    pub include_cold: bool,
    #[serde(flatten)]
    pub filter: MemoryFilter,
}

impl SearchRequest {
    /// The tiers this request searches.
    pub fn searched_tiers(&self) -> Vec<Tier> {
        match &self.tiers {
            Some(t) => {
                let mut t = t.clone();
                if self.include_cold && !t.contains(&Tier::Cold) {
                    t.push(Tier::Cold);
                }
                t
            }
            None if self.include_cold => Tier::ALL.to_vec(),
            None => vec![Tier::Hot, Tier::Warm],
        }
    }
}

/// Serde adapter: a half-life in seconds, written as a number or as `<n><s|m|h|d|w>`.
mod half_life {
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(x) => s.serialize_f64(*x),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Seconds(f64),
            Text(String),
        }
        let seconds = match Option::<Raw>::deserialize(d)? {
            None => return Ok(None),
            Some(Raw::Seconds(x)) => x,
            Some(Raw::Text(t)) => crate::time::parse_duration_seconds(&t).ok_or_else(|| {
                D::Error::custom(format!("invalid duration {t:?}: use seconds or a number with s, m, h, d or w"))
            })?,
        };
        if seconds.is_finite() && seconds > 0.0 {
            Ok(Some(seconds))
        } else {
            Err(D::Error::custom("must be a positive duration"))
        }
    }
}

/// One search result: the memory plus how it scored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SearchHit {
    #[serde(flatten)]
    pub memory: Memory,
    /// The fused rank score used for ordering.
    pub score: f32,
    /// 0..1: cosine similarity when the vector retriever found it, else the share of
    /// query terms the content contains.
    pub similarity: f32,
    /// Which retrievers found it: `vector`, `text`.
    pub retrievers: Vec<String>,
}

/// The answer to a search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SearchResponse {
    pub query: String,
    pub total_results: usize,
    pub results: Vec<SearchHit>,
    /// `keyword`, `vector` or `hybrid`: the retrievers that ran.
    pub mode: String,
}

/// A knowledge-graph entity (Session-Buddy's `create_entity`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NewEntity {
    pub name: String,
    pub entity_type: String,
    #[serde(default)]
    pub observations: Vec<String>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub properties: Map<String, Value>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
}

/// A stored entity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Entity {
    pub id: Uuid,
    pub tenant: String,
    #[serde(flatten)]
    pub entity: NewEntity,
    #[serde(with = "serde_micros")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Micros,
    #[serde(with = "serde_micros")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Micros,
}

/// A knowledge-graph relation (Session-Buddy's `create_relation`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NewRelation {
    pub from_entity: String,
    pub to_entity: String,
    pub relation_type: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub properties: Map<String, Value>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
}

/// A stored relation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Relation {
    pub id: Uuid,
    pub tenant: String,
    #[serde(flatten)]
    pub relation: NewRelation,
    #[serde(with = "serde_micros")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Micros,
}

/// Serde adapter for whole-number fields: `3` and `3.0` are the same number in JSON
/// (and in JSON Schema), and a query string writes it as text. Anything else, a
/// negative number or a fraction, is refused with a message naming what is wanted.
pub mod whole {
    use serde::de::{Deserializer, Error, Visitor};

    /// `Option<T>` from a whole number `>= 0` (or `null` / absent).
    pub fn option<'de, D: Deserializer<'de>, T: TryFrom<u64>>(d: D) -> Result<Option<T>, D::Error> {
        let n = d.deserialize_option(Whole)?;
        n.map(|n| T::try_from(n).map_err(|_| D::Error::custom(format!("{n} is too large")))).transpose()
    }

    struct Whole;

    impl<'de> Visitor<'de> for Whole {
        type Value = Option<u64>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a whole number, 0 or more")
        }

        fn visit_none<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }

        fn visit_u64<E: Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }

        fn visit_i64<E: Error>(self, v: i64) -> Result<Self::Value, E> {
            u64::try_from(v).map(Some).map_err(|_| E::custom(format!("{v} is negative; expected 0 or more")))
        }

        fn visit_f64<E: Error>(self, v: f64) -> Result<Self::Value, E> {
            if v.fract() == 0.0 && (0.0..=u64::MAX as f64).contains(&v) {
                Ok(Some(v as u64))
            } else {
                Err(E::custom(format!("{v} is not a whole number, 0 or more")))
            }
        }

        fn visit_str<E: Error>(self, v: &str) -> Result<Self::Value, E> {
            match v.parse::<u64>() {
                Ok(n) => Ok(Some(n)),
                Err(_) => match v.parse::<f64>() {
                    Ok(f) => self.visit_f64(f),
                    Err(_) => Err(E::custom(format!("{v:?} is not a whole number"))),
                },
            }
        }
    }
}
