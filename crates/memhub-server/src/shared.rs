//! What replicas share through Redis (`[redis] url`): per-principal rate limits and
//! the failed-authentication lockout, counted once across every replica (a client
//! spread over N servers gets its rate, not N times it), and the second level of
//! the query-vector cache (a question embedded by one replica is not embedded
//! again by another).
//!
//! Redis is an accelerator, never the source of truth: a call that fails or takes
//! longer than `redis.timeout_ms` falls back to this replica's own limiter or
//! cache, and after a failure Redis is left alone for a second, so an outage costs
//! each request at most one timeout per second, not one each.
//!
//! Rate limits are GCRA (the algorithm `governor` runs in process) in one Lua
//! script over one key per bucket, timed by Redis's own clock, so replicas with
//! skewed clocks still agree.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use memhub_types::{Error, ErrorCode};
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `[redis]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`; empty: nothing is shared.
    pub url: String,
    /// Put before every key memhub writes (several deployments on one Redis).
    pub key_prefix: String,
    /// How long one Redis call may take before the replica uses its own limiter or cache.
    pub timeout_ms: u64,
    /// How long a query vector stays in the shared cache.
    pub query_vector_ttl_seconds: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: String::new(),
            key_prefix: "memhub:".into(),
            timeout_ms: 250,
            query_vector_ttl_seconds: 86_400,
        }
    }
}

/// GCRA over one key. KEYS[1]: the bucket; ARGV[1]: µs between cells (the rate);
/// ARGV[2]: the burst (cells allowed at once). Returns 0 when the request may go,
/// else the µs until it would.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = interval * tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - tolerance
if allow_at > now then
  return allow_at - now
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1)
return 0
";

/// The connection replicas share state through.
pub struct Shared {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    ttl_seconds: u64,
    gcra: redis::Script,
    /// Until when (µs) Redis is left alone after a failure.
    resting_until: AtomicI64,
    /// The runtime the connection's driver runs on, for the cache's blocking calls.
    handle: tokio::runtime::Handle,
}

/// How long Redis is left alone after a failed call.
const REST: Duration = Duration::from_secs(1);

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}***@{}", &url[..scheme + 3], &url[at + 1..]),
        _ => url.to_string(),
    }
}

impl Shared {
    /// Connect (from inside the server's runtime). An unreachable Redis is an error:
    /// a replica that was told to share limits should not start without saying so.
    pub async fn connect(config: &RedisConfig) -> Result<Shared, Error> {
        let url = redact(&config.url);
        let unavailable =
            |e: String| Error::new(ErrorCode::StorageUnavailable, format!("cannot reach Redis at {url}: {e}"));
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| Error::field(ErrorCode::InvalidField, "redis.url", format!("{e}")))?;
        let timeout = Duration::from_millis(config.timeout_ms.max(1));
        let conn = tokio::time::timeout(Duration::from_secs(5), client.get_connection_manager())
            .await
            .map_err(|_| unavailable("no answer within 5 s".into()))?
            .map_err(|e| unavailable(e.to_string()))?;
        tracing::info!(redis = %url, "rate limits, the lockout and query vectors are shared through Redis");
        Ok(Shared {
            conn,
            prefix: config.key_prefix.clone(),
            timeout,
            ttl_seconds: config.query_vector_ttl_seconds.max(1),
            gcra: redis::Script::new(GCRA),
            resting_until: AtomicI64::new(0),
            handle: tokio::runtime::Handle::current(),
        })
    }

    /// Run `call` unless Redis is resting; `None` (use the replica's own) on failure or timeout.
    async fn call<T>(&self, what: &str, call: impl std::future::Future<Output = redis::RedisResult<T>>) -> Option<T> {
        let now = memhub_types::time::now_micros();
        if self.resting_until.load(Ordering::Relaxed) > now {
            return None;
        }
        let failed = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) => return Some(v),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {} ms", self.timeout.as_millis()),
        };
        let until = now + REST.as_micros() as i64;
        if self.resting_until.swap(until, Ordering::Relaxed) <= now {
            tracing::warn!(call = what, error = %failed, "Redis call failed; this replica counts on its own for a while");
            metrics::counter!("memhub_redis_failures_total").increment(1);
        }
        None
    }

    /// One request against the shared bucket `bucket` of `per_second` requests
    /// with bursts of `burst`: `Some(None)` may go, `Some(Some(wait))` is over the
    /// rate, `None` Redis did not answer.
    pub async fn rate(&self, bucket: &str, per_second: u32, burst: u32) -> Option<Option<Duration>> {
        self.gcra_check(&format!("rate:{bucket}"), 1_000_000 / u64::from(per_second.max(1)), burst).await
    }

    /// One failed authentication from `ip` (`per_minute` allowed): `Some(Some(wait))`
    /// when the address is now blocked for `wait` (every replica refuses it).
    pub async fn failed(&self, ip: std::net::IpAddr, per_minute: u32) -> Option<Option<Duration>> {
        let over =
            self.gcra_check(&format!("fail:{ip}"), 60_000_000 / u64::from(per_minute.max(1)), per_minute).await?;
        if let Some(wait) = over {
            let wait = wait.max(Duration::from_secs(1));
            let key = format!("{}blocked:{ip}", self.prefix);
            let mut conn = self.conn.clone();
            let ms = wait.as_millis() as u64;
            self.call("block", async move {
                redis::cmd("SET").arg(key).arg(1).arg("PX").arg(ms).query_async::<()>(&mut conn).await
            })
            .await;
            return Some(Some(wait));
        }
        Some(None)
    }

    /// How long `ip` stays blocked after too many failed authentications through any replica.
    pub async fn blocked(&self, ip: std::net::IpAddr) -> Option<Option<Duration>> {
        let key = format!("{}blocked:{ip}", self.prefix);
        let mut conn = self.conn.clone();
        let ms: i64 =
            self.call("blocked", async move { redis::cmd("PTTL").arg(key).query_async(&mut conn).await }).await?;
        Some((ms > 0).then(|| Duration::from_millis(ms as u64)))
    }

    async fn gcra_check(&self, key: &str, interval_us: u64, burst: u32) -> Option<Option<Duration>> {
        let mut conn = self.conn.clone();
        let mut invocation = self.gcra.key(format!("{}{key}", self.prefix));
        invocation.arg(interval_us).arg(burst.max(1));
        let wait_us: i64 = self.call("rate", async move { invocation.invoke_async(&mut conn).await }).await?;
        Some((wait_us > 0).then(|| Duration::from_micros(wait_us as u64)))
    }

    fn vector_key(&self, model: &str, text: &str) -> String {
        let digest = Sha256::digest(text.as_bytes());
        format!("{}qv:{model}:{}", self.prefix, hex::encode(digest))
    }

    /// Block on `f` from the engine's (synchronous) search path.
    fn block<T>(&self, f: impl std::future::Future<Output = Option<T>>) -> Option<T> {
        match tokio::runtime::Handle::try_current() {
            // On a runtime thread (a blocking-pool thread, or a worker that may hand
            // its tasks off): let the runtime know, then wait.
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| self.handle.block_on(f))
            }
            // A current-thread runtime cannot wait on itself: skip the shared level.
            Ok(_) => None,
            Err(_) => self.handle.block_on(f),
        }
    }
}

impl memhub_engine::query_vectors::SharedVectors for Shared {
    fn get(&self, model: &str, text: &str) -> Option<Vec<f32>> {
        let key = self.vector_key(model, text);
        let mut conn = self.conn.clone();
        let bytes: Option<Vec<u8>> = self
            .block(self.call("query vector", async move { redis::cmd("GET").arg(key).query_async(&mut conn).await }))?;
        let bytes = bytes?;
        (bytes.len() % 4 == 0)
            .then(|| bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }

    fn put(&self, model: &str, text: &str, vector: &[f32]) {
        let key = self.vector_key(model, text);
        let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
        let mut conn = self.conn.clone();
        let ttl = self.ttl_seconds;
        self.block(self.call("query vector", async move {
            redis::cmd("SET").arg(key).arg(bytes).arg("EX").arg(ttl).query_async::<()>(&mut conn).await
        }));
    }
}

/// Connect to `[redis]` when a URL is set.
pub async fn connect(config: &RedisConfig) -> Result<Option<Arc<Shared>>, Error> {
    if config.url.trim().is_empty() {
        return Ok(None);
    }
    Shared::connect(config).await.map(Arc::new).map(Some)
}
