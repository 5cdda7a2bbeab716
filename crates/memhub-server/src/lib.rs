//! memhub's transports: the REST API, MCP over streamable HTTP and stdio, and the
//! compatibility paths of the Akosha / Session-Buddy clients. All of them call the
//! same [`memhub_engine::Engine`]; none holds data of its own.

pub mod admin;
pub mod auth;
pub mod config;
pub mod events;
pub mod http;
pub mod mcp;
pub mod openapi;
pub mod replica;
pub mod rest;
pub mod shared;
pub mod telemetry;
pub mod tools;
pub mod webhooks;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{any, get, post};
use axum::Router;
use memhub_engine::Engine;
use memhub_types::{Error, ErrorCode};
use tower_http::trace::TraceLayer;

pub use config::Config;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    pub config: Arc<Config>,
    pub guard: Arc<auth::Guard>,
    pub mcp: mcp::McpService,
    /// The pull ingestion worker, when `[ingest]` names a bucket.
    pub ingest: Option<Arc<memhub_ingest::PullWorker>>,
    /// SHA-256 of the `/metrics` scrape token, when one is set.
    pub metrics_token: Option<[u8; 32]>,
    /// Set to `true` when the server shuts down: long-lived streams (the change
    /// feed) end, so the graceful shutdown does not wait on them forever.
    pub closing: Arc<tokio::sync::watch::Sender<bool>>,
    /// Outgoing webhooks ([`open_webhooks`]) and their delivery loop.
    pub webhooks: Arc<memhub_webhooks::Webhooks>,
}

/// The API keys of the configured backend: `keys.db` in the data dir, or the
/// database that replicas share.
pub fn open_keys(config: &Config) -> Result<memhub_govern::KeyStore, Error> {
    match config.storage.backend {
        config::StorageBackend::Sqlite => memhub_govern::KeyStore::open(&config.data_dir),
        config::StorageBackend::Postgres => {
            let table = memhub_postgres::PostgresKeys::connect(&config.storage.postgres)?;
            Ok(memhub_govern::KeyStore::on(Box::new(table)))
        }
    }
}

/// The pull worker's ledger on the configured backend: `ingest.db` in the data
/// dir, or the database that replicas share.
pub fn open_ledger(config: &Config) -> Result<memhub_ingest::ledger::Ledger, String> {
    match config.storage.backend {
        config::StorageBackend::Sqlite => memhub_ingest::ledger::Ledger::in_data_dir(&config.data_dir),
        config::StorageBackend::Postgres => memhub_postgres::PostgresLedger::connect(&config.storage.postgres)
            .map(|table| memhub_ingest::ledger::Ledger::on(Box::new(table)))
            .map_err(|e| e.to_string()),
    }
}

/// Where webhooks are kept on the configured backend: `webhooks.db` in the data
/// dir, or the database that replicas share.
pub fn open_webhooks(config: &Config) -> Result<Arc<dyn memhub_webhooks::WebhookTable>, Error> {
    Ok(match config.storage.backend {
        config::StorageBackend::Sqlite => Arc::new(memhub_webhooks::SqliteWebhooks::in_data_dir(&config.data_dir)?),
        config::StorageBackend::Postgres => {
            Arc::new(memhub_postgres::PostgresWebhooks::connect(&config.storage.postgres)?)
        }
    })
}

/// The audit log's file in a data dir.
pub fn audit_path(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("audit.db")
}

/// The audit chain of the configured backend: `audit.db` in the data dir (opened
/// read-only when `read_only`, for `memhub audit`), or the database that replicas share.
pub fn open_audit_table(config: &Config, read_only: bool) -> Result<Arc<dyn memhub_govern::AuditTable>, Error> {
    Ok(match config.storage.backend {
        config::StorageBackend::Sqlite if read_only => {
            Arc::new(memhub_govern::audit::open_read_only(&audit_path(&config.data_dir))?)
        }
        config::StorageBackend::Sqlite => Arc::new(memhub_govern::SqliteAudit::open(&audit_path(&config.data_dir))?),
        config::StorageBackend::Postgres => {
            Arc::new(memhub_postgres::PostgresAudit::connect(&config.storage.postgres)?)
        }
    })
}

/// The audit log requests append to: on the configured backend, or off (`audit = false`).
pub fn open_audit(config: &Config) -> Result<memhub_govern::AuditLog, Error> {
    if config.audit {
        memhub_govern::AuditLog::on(open_audit_table(config, false)?)
    } else {
        tracing::warn!("the audit log is OFF (audit = false): accesses leave no trace");
        Ok(memhub_govern::AuditLog::disabled())
    }
}

impl AppState {
    /// Open the key store and the audit log next to the store, load the JWT keys,
    /// decide the auth mode, connect to Redis when `[redis]` names one, and refuse an
    /// open server on a public address.
    pub async fn new(engine: Arc<Engine>, config: Config) -> Result<Self, Error> {
        let keys = Arc::new(open_keys(&config)?);
        let audit = Arc::new(open_audit(&config)?);
        let secret = std::env::var(&config.auth.jwt.hs256_secret_env).ok().filter(|s| !s.is_empty());
        let jwt = memhub_govern::JwtVerifier::new(&config.auth.jwt, secret.as_deref().map(str::as_bytes))?;
        let required = config.auth_required(jwt.is_some() || keys.any()?);
        config.check_exposure(required).map_err(|e| Error::new(ErrorCode::InvalidField, e))?;
        if required {
            tracing::info!(jwt = jwt.is_some(), "auth required: every request needs an API key or a JWT");
        } else {
            tracing::warn!(
                "auth mode OPEN: no credentials needed, every caller is an admin of every tenant (loopback only); \
                 create a key with `memhub keys create --role admin` to require authentication"
            );
        }
        let metrics_token = telemetry::scrape_token(&config.metrics_token_env)?;
        telemetry::recorder();
        let hosts = config.allowed_hosts();
        let shared = shared::connect(&config.redis).await?;
        if let Some(shared) = &shared {
            engine.share_query_vectors(shared.clone());
        }
        let guard = Arc::new(auth::Guard::new(required, keys, jwt, audit.clone(), &config.auth, &hosts, shared));
        let mcp = mcp::http_service(engine.clone(), audit, &hosts, config.max_body_bytes);
        let ingest =
            memhub_ingest::PullWorker::open_with(engine.clone(), config.ingest.clone(), &config.data_dir, || {
                open_ledger(&config)
            })
            .map_err(|e| Error::new(ErrorCode::InvalidField, format!("ingest: {e}")))?
            .map(Arc::new);
        let closing = Arc::new(tokio::sync::watch::channel(false).0);
        let webhooks = Arc::new(memhub_webhooks::Webhooks::on(
            open_webhooks(&config)?,
            engine.clone(),
            config.webhooks.clone(),
            guard.audit.clone(),
        ));
        Ok(AppState { engine, config: Arc::new(config), guard, mcp, ingest, metrics_token, closing, webhooks })
    }

    /// The context MCP tools run in for `caller`.
    pub fn tools(&self, caller: auth::Caller) -> tools::ToolContext {
        tools::ToolContext { engine: self.engine.clone(), caller, audit: Some(self.guard.audit.clone()) }
    }
}

/// Every route memhub serves.
pub fn router(state: AppState) -> Router {
    use rest::*;
    let memory_v2 = Router::new()
        .route("/store", post(create_memory))
        .route("/retrieve", post(retrieve))
        .route("/search", post(search))
        .route("/stats", get(stats))
        .route("/health", get(replica::health))
        .route("/{id}", get(get_memory).patch(patch_memory).delete(delete_memory));
    Router::new()
        .route("/v1/memories", post(create_memory).get(list_memories))
        .route("/v1/memories/batch", post(create_batch))
        .route("/v1/memories/{id}", get(get_memory).patch(patch_memory).delete(delete_memory))
        .route("/v1/memories/{id}/history", get(memory_history))
        .route("/v1/search", post(search))
        .route("/v1/schemas", get(list_schemas).post(register_schema))
        .route("/v1/stats", get(stats))
        .route("/memory/store", post(create_memory))
        .route("/memory/retrieve", post(retrieve))
        .route("/memory/search", post(search))
        .nest("/api/v2/memory", memory_v2)
        .route("/mcp", any(mcp::mcp_endpoint))
        .route("/mcp/mcp/v1", any(mcp::mcp_endpoint))
        .route("/mcp/store_memory", post(raw_store_memory))
        .route("/mcp/status", get(status))
        .route("/v1/export", get(admin::export))
        .route("/v1/keys", post(admin::create_key).get(admin::list_keys))
        .route("/v1/keys/{id}", axum::routing::delete(admin::revoke_key))
        .route("/v1/retention", get(admin::get_retention).put(admin::set_retention))
        .route("/v1/erase", post(admin::erase))
        .route("/v1/tiers/run", post(admin::run_tiers))
        .route("/v1/ingest/status", get(admin::ingest_status))
        .route("/v1/ingest/run", post(admin::run_ingest))
        .route("/v1/audit", get(admin::query_audit))
        .route("/v1/events", get(events::events))
        .route("/v1/webhooks", post(webhooks::create).get(webhooks::list))
        .route("/v1/webhooks/{id}", get(webhooks::get).patch(webhooks::update).delete(webhooks::delete))
        .route("/v1/webhooks/{id}/deliveries", get(webhooks::deliveries))
        .route("/v1/webhooks/{id}/deliveries/{delivery}/redeliver", post(webhooks::redeliver))
        .route("/status", get(status))
        .route("/health", get(replica::health))
        .route("/healthz", get(healthz))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/metrics", get(telemetry::metrics_endpoint))
        // After every route: it applies to the routes added so far.
        .method_not_allowed_fallback(http::method_not_allowed)
        // Inside the guard: only an authenticated request may hold a connection waiting.
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), replica::read_your_writes))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth::guard))
        .route_layer(axum::middleware::from_fn(telemetry::track))
        .fallback(http::not_found)
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(TraceLayer::new_for_http())
        .layer(tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer::new([
            axum::http::header::AUTHORIZATION,
            axum::http::header::COOKIE,
        ]))
        .with_state(state)
}

/// How often a replica over a shared store checks (or takes) the leader lock.
pub const LEADER_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// Run `job` every `interval` seconds (0: never); a failure is logged and retried
/// at the next tick.
fn spawn_job<T: Send + 'static>(
    name: &'static str,
    engine: Arc<Engine>,
    interval: u64,
    job: fn(&Engine) -> Result<T, Error>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if interval == 0 {
            return;
        }
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(interval));
        loop {
            tick.tick().await;
            let engine = engine.clone();
            // Replicas over one database: only the elected one runs it.
            let run = move || if engine.leads() { job(&engine).map(drop) } else { Ok(()) };
            if let Err(e) = http::blocking(run).await {
                tracing::error!(job = name, error = %e, "background job failed; retrying next round");
            }
        }
    })
}

/// Serve on `listener` until `shutdown` resolves, then drain in-flight requests
/// and checkpoint the store.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let engine = state.engine.clone();
    let audit = state.guard.audit.clone();
    let closing = state.closing.clone();
    let deliveries = tokio::spawn(state.webhooks.clone().run(state.closing.subscribe()));
    let shutdown = async move {
        shutdown.await;
        closing.send_replace(true);
    };
    // Replicas over one database: keep trying for (or keep) the leader lock, so a
    // dead leader's jobs move to another replica within seconds, not a job interval.
    let election = engine.shared_store().then(|| {
        let engine = engine.clone();
        tokio::spawn(async move {
            loop {
                let engine = engine.clone();
                let _ = tokio::task::spawn_blocking(move || engine.leads()).await;
                tokio::time::sleep(LEADER_CHECK).await;
            }
        })
    });
    let purge = spawn_job("purge", engine.clone(), state.config.purge_interval_seconds, Engine::purge_expired);
    let pull = state.ingest.clone().map(|w| w.spawn());
    let aging = spawn_job("tiers", engine.clone(), engine.config().tiers.interval_seconds, Engine::age_tiers);
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    // Without TCP_NODELAY a small answer can wait ~40 ms for the client's delayed ACK.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
    purge.abort();
    aging.abort();
    if let Some(e) = election {
        e.abort();
    }
    deliveries.abort();
    if let Some(p) = pull {
        p.abort();
    }
    audit.flush();
    if let Err(e) = tokio::task::spawn_blocking(move || engine.checkpoint()).await.unwrap_or(Ok(())) {
        tracing::warn!(error = %e, "checkpoint on shutdown failed");
    }
    Ok(())
}
