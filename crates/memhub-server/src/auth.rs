//! Every HTTP request passes [`guard`]: it names the caller (API key, JWT, or the
//! open-mode principal), resolves the tenant, applies rate limits and the `/mcp`
//! Origin check, hands the handler a [`Caller`], and writes one audit record for the
//! request once the answer is known. MCP tool calls write their own record (one per
//! call) in [`crate::tools`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use memhub_engine::Access;
use memhub_govern::{AuditEvent, AuditLog, JwtConfig, JwtVerifier, KeyStore, Outcome, Permission, Principal, Role};
use memhub_types::time::now_micros;
use memhub_types::{Error, ErrorCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::http::ApiError;
use crate::AppState;

/// Whether requests need credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// `required` when listening on a non-loopback address, when any API key exists
    /// or when a JWT key is configured; else `open`.
    Auto,
    /// No credentials needed: every caller is an admin of every tenant. Only on a
    /// loopback address unless `allow_unauthenticated_public` is set.
    Open,
    /// Every request but `/health`, `/healthz`, `/status` and `/openapi.json` needs a key or token.
    Required,
}

impl std::str::FromStr for AuthMode {
    type Err = String;

    /// The names the config file uses (serde's), so flags, environment and file agree.
    fn from_str(s: &str) -> Result<Self, String> {
        use serde::de::value::{Error, StrDeserializer};
        Self::deserialize(StrDeserializer::<Error>::new(s)).map_err(|e| e.to_string())
    }
}

/// `[auth]` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub mode: AuthMode,
    pub jwt: JwtConfig,
    /// Kinds a `manager` may write.
    pub manager_write_kinds: Vec<String>,
    /// The principal of `memhub mcp --stdio` (a local process: no credentials).
    pub local_role: Role,
    pub local_tenant: String,
    pub local_user: Option<String>,
    /// Requests per second each principal may make (token bucket; 0 = no limit).
    pub rate_per_second: u32,
    /// Bucket size: requests a principal may make at once (0: twice the rate).
    pub rate_burst: u32,
    /// Failed authentications per client address per minute before it gets 429s.
    pub auth_failures_per_minute: u32,
    /// `Origin` values `/mcp` accepts besides those of `mcp_allowed_hosts`
    /// (e.g. `https://app.example.com`); `*` accepts any.
    pub mcp_allowed_origins: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::Auto,
            jwt: JwtConfig::default(),
            manager_write_kinds: vec!["insight".into(), "decision".into()],
            local_role: Role::Admin,
            local_tenant: memhub_types::DEFAULT_TENANT.into(),
            local_user: None,
            rate_per_second: 1000,
            rate_burst: 0,
            auth_failures_per_minute: 20,
            mcp_allowed_origins: Vec::new(),
        }
    }
}

/// An authenticated request: who, in which tenant, with which scopes.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Arc<Principal>,
    pub tenant: String,
    pub access: Access,
    pub request_id: String,
    pub client: String,
}

impl Caller {
    /// A caller for `principal` in `tenant`.
    pub fn new(
        principal: Principal,
        tenant: String,
        manager_write_kinds: &[String],
        request_id: String,
        client: String,
    ) -> Self {
        let access = principal.access(&tenant, manager_write_kinds);
        Caller { principal: Arc::new(principal), tenant, access, request_id, client }
    }

    /// The configured local principal of `memhub mcp --stdio`.
    pub fn local(config: &AuthConfig) -> Self {
        let principal = Principal {
            id: "local".into(),
            role: config.local_role,
            tenant: config.local_tenant.clone(),
            user_id: config.local_user.clone(),
            systems: None,
            kinds: None,
            can_read: true,
            superadmin: false,
        };
        Caller::new(principal, config.local_tenant.clone(), &config.manager_write_kinds, String::new(), "stdio".into())
    }

    /// Refuse unless the role allows `p`.
    pub fn require(&self, p: Permission) -> Result<(), Error> {
        self.principal.require(p)
    }

    /// The audit record of this caller doing `action`.
    pub fn event(&self, action: &str, targets: Vec<String>, filters: Value, status: u16) -> AuditEvent {
        AuditEvent {
            at: now_micros(),
            actor: self.principal.id.clone(),
            role: self.principal.role.as_str().into(),
            tenant: self.tenant.clone(),
            action: action.into(),
            targets,
            filters,
            outcome: Outcome::of_status(status),
            status,
            client: self.client.clone(),
            request_id: self.request_id.clone(),
        }
    }
}

/// What a handler adds to its request's audit record (put it in the response's extensions).
#[derive(Debug, Clone, Default)]
pub struct AuditNote {
    pub targets: Vec<String>,
    pub filters: Value,
}

impl AuditNote {
    /// The ids a request touched.
    pub fn targets(targets: Vec<String>) -> axum::Extension<AuditNote> {
        axum::Extension(AuditNote { targets, filters: Value::Null })
    }

    /// The filters a request selected by (never a query text or content).
    pub fn filters(filters: &impl Serialize) -> axum::Extension<AuditNote> {
        axum::Extension(AuditNote {
            targets: Vec::new(),
            filters: serde_json::to_value(filters).unwrap_or(Value::Null),
        })
    }
}

/// The effective auth mode and everything the guard needs.
pub struct Guard {
    pub required: bool,
    pub keys: Arc<KeyStore>,
    pub jwt: Option<JwtVerifier>,
    pub audit: Arc<AuditLog>,
    pub manager_write_kinds: Vec<String>,
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    failures: Option<DefaultKeyedRateLimiter<IpAddr>>,
    blocked: Mutex<HashMap<IpAddr, Instant>>,
    allowed_origins: Vec<String>,
    /// Requests per second and burst of a bucket (for the shared limiter).
    rate: (u32, u32),
    failures_per_minute: u32,
    /// Rate limits and the lockout counted across replicas (Redis); the limiters
    /// above count when it is absent or does not answer.
    shared: Option<Arc<crate::shared::Shared>>,
}

impl Guard {
    pub fn new(
        required: bool,
        keys: Arc<KeyStore>,
        jwt: Option<JwtVerifier>,
        audit: Arc<AuditLog>,
        config: &AuthConfig,
        allowed_hosts: &[String],
        shared: Option<Arc<crate::shared::Shared>>,
    ) -> Guard {
        let quota = NonZeroU32::new(config.rate_per_second).map(|rate| {
            let burst =
                NonZeroU32::new(config.rate_burst).unwrap_or(rate.saturating_mul(NonZeroU32::MIN.saturating_add(1)));
            (rate, burst)
        });
        let limiter = quota.map(|(rate, burst)| RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)));
        let failures =
            NonZeroU32::new(config.auth_failures_per_minute).map(|n| RateLimiter::keyed(Quota::per_minute(n)));
        let mut allowed_origins = config.mcp_allowed_origins.clone();
        for host in allowed_hosts {
            allowed_origins.push(host.clone());
        }
        Guard {
            required,
            keys,
            jwt,
            audit,
            manager_write_kinds: config.manager_write_kinds.clone(),
            limiter,
            failures,
            blocked: Mutex::new(HashMap::new()),
            allowed_origins,
            rate: quota.map_or((0, 0), |(r, b)| (r.get(), b.get())),
            failures_per_minute: config.auth_failures_per_minute,
            shared,
        }
    }

    /// Whether an `Origin` header value is acceptable for `/mcp`: its host must be
    /// allowed (a page on another site must not drive a local MCP server).
    fn origin_allowed(&self, origin: &str) -> bool {
        if self.allowed_origins.iter().any(|o| o == "*" || o == origin) {
            return true;
        }
        let host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        let host =
            host.rsplit_once(':').filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit())).map_or(host, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.allowed_origins.iter().any(|o| o == host)
    }

    /// How long `ip` is still refused after too many failed authentications (through
    /// any replica, when they share Redis).
    async fn blocked_for(&self, ip: IpAddr) -> Option<Duration> {
        let shared = match &self.shared {
            Some(s) => s.blocked(ip).await.flatten(),
            None => None,
        };
        shared.or_else(|| self.blocked_here(ip))
    }

    fn blocked_here(&self, ip: IpAddr) -> Option<Duration> {
        let mut blocked = self.blocked.lock().unwrap_or_else(|p| p.into_inner());
        match blocked.get(&ip) {
            Some(until) if *until > Instant::now() => Some(*until - Instant::now()),
            Some(_) => {
                blocked.remove(&ip);
                None
            }
            None => None,
        }
    }

    /// Count a failed authentication; returns the wait when the client is now blocked.
    async fn failed_from(&self, ip: IpAddr) -> Option<Duration> {
        if let (Some(s), true) = (&self.shared, self.failures_per_minute > 0) {
            if let Some(counted) = s.failed(ip, self.failures_per_minute).await {
                return counted;
            }
        }
        self.failed_here(ip)
    }

    fn failed_here(&self, ip: IpAddr) -> Option<Duration> {
        let limiter = self.failures.as_ref()?;
        let not_until = limiter.check_key(&ip).err()?;
        let wait = not_until.wait_time_from(DefaultClock::default().now()).max(Duration::from_secs(1));
        let mut blocked = self.blocked.lock().unwrap_or_else(|p| p.into_inner());
        if blocked.len() > 100_000 {
            blocked.retain(|_, until| *until > Instant::now());
        }
        blocked.insert(ip, Instant::now() + wait);
        Some(wait)
    }

    async fn rate_limited(&self, principal: &Principal, client: Option<IpAddr>) -> Option<Duration> {
        let limiter = self.limiter.as_ref()?;
        let bucket = rate_bucket(principal, client)?;
        if let Some(s) = &self.shared {
            if let Some(counted) = s.rate(&bucket, self.rate.0, self.rate.1).await {
                return counted;
            }
        }
        // Per-address buckets are unbounded in number: forget the full ones now and
        // then. Only those requests pay for counting the buckets.
        if bucket.starts_with(OPEN_ADDRESS) && limiter.len() > 100_000 {
            limiter.retain_recent();
        }
        let not_until = limiter.check_key(&bucket).err()?;
        Some(not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// The principal a bearer credential names.
    async fn authenticate(&self, token: &str) -> Result<Principal, Error> {
        if memhub_govern::keys::key_id(token).is_some() {
            if let Some(known) = self.keys.authenticate_cached(token) {
                return known;
            }
            let keys = self.keys.clone();
            let token = token.to_string();
            // argon2 takes tens of milliseconds the first time a key is seen.
            return crate::http::blocking(move || keys.authenticate(&token)).await;
        }
        match &self.jwt {
            Some(jwt) => jwt.verify(token),
            None => Err(Error::new(
                ErrorCode::InvalidCredentials,
                "not an API key (mh_...), and no JWT key is configured to check tokens",
            )),
        }
    }
}

async fn blocked_for(guard: &Guard, ip: Option<IpAddr>) -> Option<Duration> {
    guard.blocked_for(ip?).await
}

async fn failed_from(guard: &Guard, ip: Option<IpAddr>) -> Option<Duration> {
    guard.failed_from(ip?).await
}

fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned)
}

fn too_many(wait: Duration, what: &str) -> Response {
    let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
    let mut resp =
        ApiError(Error::new(ErrorCode::RateLimited, format!("{what}; retry after {seconds} s"))).into_response();
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    resp
}

/// Routes that answer without credentials and leave no audit record.
fn is_public(path: &str) -> bool {
    matches!(path, "/health" | "/healthz" | "/status" | "/mcp/status" | "/openapi.json" | "/api/v2/memory/health")
}

/// The audit action of a REST route (`None`: recorded elsewhere, e.g. MCP tool calls).
fn action_for(method: &Method, path: &str) -> Option<&'static str> {
    let path = path.strip_prefix("/api/v2/memory").map_or(path, |rest| if rest.is_empty() { "/" } else { rest });
    Some(match (method.as_str(), path) {
        ("POST", "/v1/memories" | "/memory/store" | "/store" | "/mcp/store_memory") => "memory.store",
        ("GET", "/v1/memories") => "memory.list",
        ("POST", "/v1/memories/batch") => "memory.batch_store",
        ("GET", "/v1/memories/{id}" | "/{id}") => "memory.get",
        ("PATCH", "/v1/memories/{id}" | "/{id}") => "memory.update",
        ("DELETE", "/v1/memories/{id}" | "/{id}") => "memory.delete",
        ("GET", "/v1/memories/{id}/history") => "memory.history",
        ("POST", "/v1/search" | "/memory/search" | "/search") => "memory.search",
        ("POST", "/memory/retrieve" | "/retrieve") => "memory.retrieve",
        ("GET", "/v1/export") => "memory.export",
        ("GET", "/v1/stats" | "/stats") => "stats",
        ("GET", "/v1/schemas") => "schema.list",
        ("POST", "/v1/schemas") => "schema.register",
        ("POST", "/v1/keys") => "key.create",
        ("GET", "/v1/keys") => "key.list",
        ("DELETE", "/v1/keys/{id}") => "key.revoke",
        ("GET", "/v1/retention") => "retention.get",
        ("PUT", "/v1/retention") => "retention.set",
        ("POST", "/v1/erase") => "erase",
        ("POST", "/v1/tiers/run") => "tiers.run",
        ("GET", "/v1/ingest/status") => "ingest.status",
        ("POST", "/v1/ingest/run") => "ingest.run",
        ("GET", "/v1/audit") => "audit.query",
        ("GET", "/v1/events") => "events.follow",
        ("POST", "/v1/webhooks") => "webhook.create",
        ("GET", "/v1/webhooks" | "/v1/webhooks/{id}" | "/v1/webhooks/{id}/deliveries") => "webhook.get",
        ("PATCH", "/v1/webhooks/{id}") => "webhook.update",
        ("DELETE", "/v1/webhooks/{id}") => "webhook.delete",
        ("POST", "/v1/webhooks/{id}/deliveries/{delivery}/redeliver") => "webhook.redeliver",
        _ => return None,
    })
}

fn path_id(path: &str, matched: &str) -> Option<String> {
    if !matched.contains("{id}") {
        return None;
    }
    let prefix = &matched[..matched.find("{id}")?];
    let rest = path.strip_prefix(prefix)?;
    Some(rest.split('/').next().unwrap_or(rest).to_string())
}

/// The middleware: authenticate, authorize the tenant, limit, run, audit.
pub async fn guard(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let guard = &state.guard;
    let path = req.uri().path().to_string();
    if is_public(&path) {
        return next.run(req).await;
    }
    let method = req.method().clone();
    let matched = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string()).unwrap_or_default();
    let request_id = request_id(req.headers());
    let ip = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let client = ip.map(|ip| ip.to_string()).unwrap_or_default();
    let is_mcp = path == "/mcp" || path.starts_with("/mcp/mcp");
    let anonymous = |action: &str, actor: &str, status: u16| AuditEvent {
        at: now_micros(),
        actor: actor.into(),
        role: String::new(),
        tenant: String::new(),
        action: action.into(),
        targets: Vec::new(),
        filters: Value::Null,
        outcome: Outcome::of_status(status),
        status,
        client: client.clone(),
        request_id: request_id.clone(),
    };
    let with_id = |mut resp: Response| {
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            resp.headers_mut().insert("x-request-id", v);
        }
        resp
    };

    if is_mcp {
        if let Some(origin) = req.headers().get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
            if !guard.origin_allowed(origin) {
                guard.audit.record(anonymous("auth.origin_refused", "anonymous", 403));
                return with_id(
                    ApiError(Error::forbidden(format!(
                        "Origin {origin:?} is not allowed on /mcp (DNS-rebinding protection); add it to auth.mcp_allowed_origins"
                    )))
                    .into_response(),
                );
            }
        }
    }

    let bearer = req.headers().get(header::AUTHORIZATION).map(|v| {
        v.to_str().ok().and_then(|s| s.strip_prefix("Bearer ").or_else(|| s.strip_prefix("bearer "))).map(str::trim)
    });
    if path == "/metrics" && blocked_for(guard, ip).await.is_none() {
        if let (Some(Some(token)), Some(want)) = (bearer, state.metrics_token) {
            // Digests compare in constant time as far as the token is concerned.
            if crate::telemetry::digest(token) == want {
                req.extensions_mut().insert(crate::telemetry::ScrapeToken);
                return with_id(next.run(req).await);
            }
        }
    }
    let principal = match bearer {
        None if !guard.required => Ok(Principal::open()),
        None => Err(Error::new(ErrorCode::MissingCredentials, "send Authorization: Bearer <API key or JWT>")),
        Some(None) => {
            Err(Error::new(ErrorCode::InvalidCredentials, "the Authorization header must be Bearer <API key or JWT>"))
        }
        Some(Some(token)) => {
            if let Some(wait) = blocked_for(guard, ip).await {
                guard.audit.record(anonymous("auth.failed", "anonymous", 429));
                return with_id(too_many(wait, "too many failed authentications from this address"));
            }
            let token = token.to_string();
            match guard.authenticate(&token).await {
                Ok(p) => Ok(p),
                Err(e) => {
                    // A key's id is not secret: naming it shows which key is being guessed.
                    let actor =
                        memhub_govern::keys::key_id(&token).map_or("anonymous".to_string(), |id| format!("key:{id}"));
                    if let Some(wait) = failed_from(guard, ip).await {
                        guard.audit.record(anonymous("auth.failed", &actor, 429));
                        return with_id(too_many(wait, "too many failed authentications from this address"));
                    }
                    guard.audit.record(anonymous("auth.failed", &actor, e.code.http_status()));
                    return with_id(unauthorized(e));
                }
            }
        }
    };
    let principal = match principal {
        Ok(p) => p,
        Err(e) => {
            guard.audit.record(anonymous("auth.failed", "anonymous", e.code.http_status()));
            return with_id(unauthorized(e));
        }
    };
    let requested = req.headers().get("x-memhub-tenant").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let tenant = match principal.tenant_for(requested.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            let caller = Caller::new(
                principal,
                requested.unwrap_or_default(),
                &guard.manager_write_kinds,
                request_id.clone(),
                client.clone(),
            );
            let action = action_for(&method, &matched).unwrap_or("tenant.refused");
            guard.audit.record(caller.event(action, Vec::new(), Value::Null, 403));
            return with_id(ApiError(e).into_response());
        }
    };
    let caller = Caller::new(principal, tenant, &guard.manager_write_kinds, request_id.clone(), client.clone());
    if let Some(wait) = guard.rate_limited(&caller.principal, ip).await {
        let action = action_for(&method, &matched).unwrap_or("rate_limited");
        guard.audit.record(caller.event(action, Vec::new(), Value::Null, 429));
        return with_id(too_many(wait, "rate limit exceeded for this key"));
    }
    req.extensions_mut().insert(caller.clone());
    let resp = next.run(req).await;
    if let Some(action) = action_for(&method, &matched) {
        let note = resp.extensions().get::<AuditNote>().cloned().unwrap_or_default();
        let mut targets: Vec<String> = path_id(&path, &matched).into_iter().collect();
        for t in note.targets {
            if !targets.contains(&t) {
                targets.push(t);
            }
        }
        guard.audit.record(caller.event(action, targets, note.filters, resp.status().as_u16()));
    }
    with_id(resp)
}

/// The prefix of open mode's per-address rate-limit buckets.
const OPEN_ADDRESS: &str = "open@";

/// The rate-limit bucket a request draws from: its principal's (a key, a JWT
/// subject, the local principal). Open mode has no principals, only addresses: a
/// client on another host (an open server behind a proxy, with
/// `allow_unauthenticated_public`) gets a bucket per address (per /64 for IPv6, where
/// one host holds many), and clients on this machine (loopback, where every process
/// shares one address) are not limited. A request whose address is unknown shares
/// one bucket with the others like it.
fn rate_bucket(principal: &Principal, client: Option<IpAddr>) -> Option<String> {
    if principal.id != Principal::OPEN_ID {
        return Some(principal.id.clone());
    }
    match client.map(|ip| ip.to_canonical()) {
        Some(ip) if ip.is_loopback() => None,
        Some(IpAddr::V6(v6)) => {
            let s = v6.segments();
            Some(format!("{OPEN_ADDRESS}{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3]))
        }
        Some(ip) => Some(format!("{OPEN_ADDRESS}{ip}")),
        None => Some(Principal::OPEN_ID.to_string()),
    }
}

fn unauthorized(e: Error) -> Response {
    let mut resp = ApiError(e).into_response();
    resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"memhub\""));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_map_to_actions_and_ids() {
        assert_eq!(action_for(&Method::POST, "/v1/memories"), Some("memory.store"));
        assert_eq!(action_for(&Method::GET, "/api/v2/memory/{id}"), Some("memory.get"));
        assert_eq!(action_for(&Method::POST, "/api/v2/memory/search"), Some("memory.search"));
        assert_eq!(action_for(&Method::POST, "/mcp"), None, "tool calls audit themselves");
        assert_eq!(path_id("/v1/memories/abc/history", "/v1/memories/{id}/history").as_deref(), Some("abc"));
        assert_eq!(path_id("/v1/memories", "/v1/memories"), None);
    }

    #[test]
    fn open_mode_limits_other_hosts_per_address_and_not_this_machine() {
        let open = Principal::open();
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert_eq!(rate_bucket(&open, ip("127.0.0.1")), None);
        assert_eq!(rate_bucket(&open, ip("::1")), None);
        assert_eq!(rate_bucket(&open, ip("::ffff:127.0.0.1")), None, "IPv4-mapped loopback");
        assert_eq!(rate_bucket(&open, None).as_deref(), Some("open"), "an unknown address is limited, shared");
        assert_eq!(
            rate_bucket(&open, ip("2001:db8:1:2::5")),
            rate_bucket(&open, ip("2001:db8:1:2:ffff::9")),
            "one IPv6 /64, one bucket"
        );
        assert_ne!(rate_bucket(&open, ip("2001:db8:1:2::5")), rate_bucket(&open, ip("2001:db8:1:3::5")));
        assert_eq!(rate_bucket(&open, ip("10.0.0.7")).as_deref(), Some("open@10.0.0.7"));
        assert_ne!(rate_bucket(&open, ip("10.0.0.7")), rate_bucket(&open, ip("10.0.0.8")));
        let key = Principal { id: "key:abc".into(), superadmin: false, ..Principal::open() };
        assert_eq!(
            rate_bucket(&key, ip("127.0.0.1")).as_deref(),
            Some("key:abc"),
            "a key is limited wherever it calls from"
        );
        assert_eq!(rate_bucket(&key, ip("10.0.0.7")), rate_bucket(&key, ip("10.0.0.8")), "one bucket per key");
    }
}
