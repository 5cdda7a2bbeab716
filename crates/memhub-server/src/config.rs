//! Configuration: a TOML file, then `MEMHUB_*` environment variables, then
//! command-line flags, each overriding the one before.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use memhub_engine::EngineConfig;

use crate::auth::{AuthConfig, AuthMode};
use serde::{Deserialize, Serialize};

/// Everything a memhub server is configured with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listen address. Default `127.0.0.1:8682`.
    pub addr: SocketAddr,
    /// Where the store lives. Default: the platform data dir (`~/.local/share/memhub`).
    pub data_dir: PathBuf,
    /// Largest request body accepted, in bytes. Default 16 MiB.
    pub max_body_bytes: usize,
    /// `Host` header values accepted on `/mcp` (DNS-rebinding protection); `*` allows any.
    /// Default: localhost, 127.0.0.1, ::1 and the listen address.
    pub mcp_allowed_hosts: Vec<String>,
    /// `tracing` filter, e.g. `info` or `memhub=debug`.
    pub log: String,
    /// Allow auth mode `open` on a non-loopback address (e.g. behind an
    /// authenticating proxy). Without it the server refuses to start that way.
    pub allow_unauthenticated_public: bool,
    /// Seconds between runs of the purge job (expired memories and retention).
    pub purge_interval_seconds: u64,
    /// Write the audit log (`<data_dir>/audit.db`). Turn off only to measure its cost.
    pub audit: bool,
    /// The environment variable holding the scrape token of `GET /metrics` (default
    /// `MEMHUB_METRICS_TOKEN`; at least 16 characters). Unset: only a superadmin (or
    /// auth mode `open`) may scrape.
    pub metrics_token_env: String,
    pub auth: AuthConfig,
    pub engine: EngineConfig,
    pub embedder: EmbedderConfig,
    /// The pull ingestion worker (`[ingest]`; off without a bucket).
    pub ingest: memhub_ingest::IngestConfig,
    /// Outgoing webhooks (`[webhooks]`).
    pub webhooks: memhub_webhooks::WebhookConfig,
    /// Where the memories live (`[storage]`).
    pub storage: StorageConfig,
    /// What replicas share through Redis (`[redis]`; nothing without a URL).
    pub redis: crate::shared::RedisConfig,
}

/// `[storage]`: the source of truth of the memories.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    pub backend: StorageBackend,
    /// `[storage.postgres]`, for `backend = "postgres"`.
    pub postgres: memhub_postgres::PostgresConfig,
    /// How long a request that names a change (`X-Memhub-Seq`, `min_seq`) waits for
    /// this replica to apply it before it is refused with 503 `replica_behind`.
    pub read_wait_ms: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig { backend: StorageBackend::default(), postgres: Default::default(), read_wait_ms: 5_000 }
    }
}

/// Which store keeps the memories.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// `memhub.db` in the data dir (embedded, one process).
    #[default]
    Sqlite,
    /// A PostgreSQL database (`storage.postgres.url`), which replicas share, with
    /// the API keys and the ingest ledger. The audit log and webhooks still live in the
    /// data dir for now.
    Postgres,
}

impl std::str::FromStr for StorageBackend {
    type Err = String;

    /// The names the config file uses (serde's), so flags, environment and file agree.
    fn from_str(s: &str) -> Result<Self, String> {
        use serde::de::value::{Error, StrDeserializer};
        Self::deserialize(StrDeserializer::<Error>::new(s)).map_err(|e| e.to_string())
    }
}

/// Which server-side embedder to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbedderKind {
    /// The local MiniLM encoder if its files are in `model_dir`, else none.
    Auto,
    /// The local all-MiniLM-L6-v2 encoder (fail to start if the files are missing).
    Minilm,
    /// An OpenAI-compatible `/v1/embeddings` endpoint at `url`.
    Openai,
    /// No server-side embedder: clients supply vectors; text-only search is keyword-only.
    None,
}

impl std::str::FromStr for EmbedderKind {
    type Err = String;

    /// The names the config file uses (serde's), so flags, environment and file agree.
    fn from_str(s: &str) -> Result<Self, String> {
        use serde::de::value::{Error, StrDeserializer};
        Self::deserialize(StrDeserializer::<Error>::new(s)).map_err(|e| e.to_string())
    }
}

/// Server-side embedding settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbedderConfig {
    pub kind: EmbedderKind,
    /// Where the MiniLM files are. Default `<data_dir>/models/all-MiniLM-L6-v2`.
    pub model_dir: Option<PathBuf>,
    /// Base URL of the OpenAI-compatible service, e.g. `http://localhost:11434`.
    pub url: Option<String>,
    /// The remote model's name, e.g. `nomic-embed-text`.
    pub model: Option<String>,
    /// The environment variable holding the remote service's API key.
    pub api_key_env: String,
}

impl Default for EmbedderConfig {
    fn default() -> Self {
        EmbedderConfig {
            kind: EmbedderKind::Auto,
            model_dir: None,
            url: None,
            model: None,
            api_key_env: "MEMHUB_EMBEDDER_API_KEY".into(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 8682)),
            data_dir: default_data_dir(),
            max_body_bytes: 16 * 1024 * 1024,
            mcp_allowed_hosts: Vec::new(),
            log: "info".into(),
            allow_unauthenticated_public: false,
            purge_interval_seconds: 60,
            audit: true,
            metrics_token_env: "MEMHUB_METRICS_TOKEN".into(),
            auth: AuthConfig::default(),
            ingest: memhub_ingest::IngestConfig::default(),
            engine: EngineConfig::default(),
            embedder: EmbedderConfig::default(),
            webhooks: memhub_webhooks::WebhookConfig::default(),
            storage: StorageConfig::default(),
            redis: crate::shared::RedisConfig::default(),
        }
    }
}

/// The platform data dir for memhub, e.g. `~/.local/share/memhub` on Linux.
pub fn default_data_dir() -> PathBuf {
    dirs::data_dir().unwrap_or_else(|| PathBuf::from(".")).join("memhub")
}

/// A configuration that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config file {path}: {source}")]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
    #[error("invalid environment variable {name}={value:?}: {reason}")]
    Env { name: String, value: String, reason: String },
}

fn env_value<T: std::str::FromStr>(name: &str, get: &impl Fn(&str) -> Option<String>) -> Result<Option<T>, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match get(name) {
        None => Ok(None),
        Some(value) => value.parse().map(Some).map_err(|e: T::Err| ConfigError::Env {
            name: name.into(),
            reason: e.to_string(),
            value,
        }),
    }
}

impl Config {
    /// Load `file` (if given), then apply the environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut config = match file {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
                toml::from_str(&text)
                    .map_err(|source| ConfigError::Parse { path: path.into(), source: Box::new(source) })?
            }
            None => Config::default(),
        };
        config.apply_env(|k| std::env::var(k).ok())?;
        Ok(config)
    }

    /// Apply `MEMHUB_*` variables read through `get`.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = env_value("MEMHUB_ADDR", &get)? {
            self.addr = v;
        }
        if let Some(v) = get("MEMHUB_DATA_DIR") {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = env_value("MEMHUB_STORAGE_BACKEND", &get)? {
            self.storage.backend = v;
        }
        if let Some(v) = get("MEMHUB_POSTGRES_URL") {
            self.storage.postgres.url = v;
        }
        if let Some(v) = env_value("MEMHUB_READ_WAIT_MS", &get)? {
            self.storage.read_wait_ms = v;
        }
        if let Some(v) = env_value("MEMHUB_MAX_BODY_BYTES", &get)? {
            self.max_body_bytes = v;
        }
        if let Some(v) = get("MEMHUB_MCP_ALLOWED_HOSTS") {
            self.mcp_allowed_hosts = v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
        }
        if let Some(v) = env_value("MEMHUB_ALLOW_UNAUTHENTICATED_PUBLIC", &get)? {
            self.allow_unauthenticated_public = v;
        }
        if let Some(v) = env_value("MEMHUB_AUTH", &get)? {
            self.auth.mode = v;
        }
        if let Some(v) = env_value("MEMHUB_RATE_PER_SECOND", &get)? {
            self.auth.rate_per_second = v;
        }
        if let Some(v) = env_value("MEMHUB_AUTH_FAILURES_PER_MINUTE", &get)? {
            self.auth.auth_failures_per_minute = v;
        }
        if let Some(v) = get("MEMHUB_REDIS_URL") {
            self.redis.url = v;
        }
        if let Some(v) = env_value("MEMHUB_AUDIT", &get)? {
            self.audit = v;
        }
        if let Some(v) = get("MEMHUB_INGEST_BUCKET") {
            self.ingest.bucket.get_or_insert_with(Default::default).url = v;
        }
        if let Some(v) = get("MEMHUB_COLD_BUCKET") {
            self.engine.tiers.cold.get_or_insert_with(Default::default).url = v;
        }
        if let Some(v) = env_value("MEMHUB_PURGE_INTERVAL_SECONDS", &get)? {
            self.purge_interval_seconds = v;
        }
        if let Some(v) = env_value("MEMHUB_EVENTS_RETENTION_SECONDS", &get)? {
            self.engine.events.retention_seconds = v;
        }
        if let Some(v) = env_value("MEMHUB_WEBHOOKS_ALLOW_PRIVATE_TARGETS", &get)? {
            self.webhooks.allow_private_targets = v;
        }
        if let Some(v) = env_value("MEMHUB_WEBHOOKS_MAX_FAILURES", &get)? {
            self.webhooks.max_failures = v;
        }
        if let Some(v) = env_value("MEMHUB_WEBHOOKS_RETRY_INITIAL_MS", &get)? {
            self.webhooks.retry_initial_ms = v;
        }
        if let Some(v) = env_value("MEMHUB_WEBHOOKS_BATCH_SIZE", &get)? {
            self.webhooks.batch_size = v;
        }
        if let Some(v) = get("MEMHUB_LOG") {
            self.log = v;
        }
        if let Some(v) = env_value("MEMHUB_EMBEDDING_DIM", &get)? {
            self.engine.embedding_dim = v;
        }
        if let Some(v) = get("MEMHUB_EMBEDDING_MODEL") {
            self.engine.embedding_model = v;
        }
        if let Some(v) = env_value("MEMHUB_MAX_CONTENT_BYTES", &get)? {
            self.engine.max_content_bytes = v;
        }
        if let Some(v) = env_value("MEMHUB_GROUP_COMMIT", &get)? {
            self.engine.group_commit = v;
        }
        if let Some(v) = env_value("MEMHUB_MAX_BATCH", &get)? {
            self.engine.max_batch = v;
        }
        if let Some(v) = env_value("MEMHUB_EMBEDDER", &get)? {
            self.embedder.kind = v;
        }
        if let Some(v) = get("MEMHUB_MODEL_DIR") {
            self.embedder.model_dir = Some(PathBuf::from(v));
        }
        if let Some(v) = get("MEMHUB_EMBEDDER_URL") {
            self.embedder.url = Some(v);
        }
        if let Some(v) = get("MEMHUB_EMBEDDER_MODEL") {
            self.embedder.model = Some(v);
        }
        Ok(())
    }

    /// Whether requests need credentials, given whether any key or JWT key exists.
    pub fn auth_required(&self, credentials_exist: bool) -> bool {
        match self.auth.mode {
            AuthMode::Required => true,
            AuthMode::Open => false,
            AuthMode::Auto => credentials_exist || !self.addr.ip().is_loopback(),
        }
    }

    /// Refuse configurations that would expose every memory without authentication.
    pub fn check_exposure(&self, auth_required: bool) -> Result<(), String> {
        if auth_required || self.addr.ip().is_loopback() || self.allow_unauthenticated_public {
            return Ok(());
        }
        Err(format!(
            "refusing to listen on {} with auth mode open: every memory would be readable and writable from the \
             network. Use auth mode required (create a key with `memhub keys create --role admin`), listen on \
             127.0.0.1, or, behind an authenticating proxy, set allow_unauthenticated_public = true \
             (MEMHUB_ALLOW_UNAUTHENTICATED_PUBLIC=true)",
            self.addr
        ))
    }

    /// Where the local encoder's files are looked for.
    pub fn model_dir(&self) -> PathBuf {
        self.embedder.model_dir.clone().unwrap_or_else(|| self.data_dir.join("models").join("all-MiniLM-L6-v2"))
    }

    /// The `Host` values `/mcp` accepts.
    pub fn allowed_hosts(&self) -> Vec<String> {
        if !self.mcp_allowed_hosts.is_empty() {
            return self.mcp_allowed_hosts.clone();
        }
        let mut hosts: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
        if !self.addr.ip().is_unspecified() && !self.addr.ip().is_loopback() {
            hosts.push(self.addr.ip().to_string());
        }
        hosts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_env_override_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memhub.toml");
        std::fs::write(&path, "addr = \"0.0.0.0:9000\"\nmax_body_bytes = 1000\n[engine]\nembedding_dim = 8\n").unwrap();
        let mut c: Config = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(c.addr.port(), 9000);
        assert_eq!(c.engine.embedding_dim, 8);
        assert_eq!(c.engine.max_batch, 1000, "unset keys keep their defaults");
        c.apply_env(|k| match k {
            "MEMHUB_ADDR" => Some("127.0.0.1:7000".into()),
            "MEMHUB_EMBEDDING_DIM" => Some("16".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!((c.addr.port(), c.engine.embedding_dim), (7000, 16));
    }

    #[test]
    fn open_auth_on_a_public_address_needs_an_explicit_opt_in() {
        let mut c = Config::default();
        assert!(!c.auth_required(false), "loopback without keys: open");
        assert!(c.auth_required(true), "any key: required");
        assert!(c.check_exposure(false).is_ok());
        c.addr = "0.0.0.0:8682".parse().unwrap();
        assert!(c.auth_required(false), "auto on a public address: required");
        c.apply_env(|k| (k == "MEMHUB_AUTH").then(|| "open".to_string())).unwrap();
        assert!(!c.auth_required(true));
        assert!(c.check_exposure(false).unwrap_err().contains("auth mode open"));
        c.apply_env(|k| (k == "MEMHUB_ALLOW_UNAUTHENTICATED_PUBLIC").then(|| "true".to_string())).unwrap();
        assert!(c.check_exposure(false).is_ok());
    }

    #[test]
    fn bad_values_are_named() {
        let mut c = Config::default();
        let e = c.apply_env(|k| (k == "MEMHUB_MAX_BATCH").then(|| "lots".to_string())).unwrap_err();
        assert!(e.to_string().contains("MEMHUB_MAX_BATCH"), "{e}");
        let e = toml::from_str::<Config>("adr = \"x\"").unwrap_err();
        assert!(e.to_string().contains("adr"), "{e}");
    }
}
