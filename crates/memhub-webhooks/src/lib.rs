//! Outgoing webhooks: the change stream, delivered to HTTP receivers.
//!
//! A webhook belongs to a tenant and takes the changes a reader of the whole
//! tenant would see, narrowed by its filters. Delivery is at least once and in
//! sequence order per webhook: the engine's change log is the outbox, and each
//! webhook keeps how far it has been delivered plus the batch in flight
//! (`webhooks.db`), written before the batch is sent. After a crash the same batch
//! is sent again under the same `webhook-id`, so a receiver that dedupes by it sees
//! every change once. Deliveries are signed as the Standard Webhooks
//! specification says ([`sign`]), retried with exponential backoff and jitter, and
//! a webhook that keeps failing is disabled until an admin enables it again.
//! Targets on private, loopback and link-local addresses are refused unless
//! allowed ([`target`]).

pub mod sign;
pub mod store;

pub use store::{Settle, SqliteWebhooks, WebhookTable};
pub mod target;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use memhub_engine::Engine;
use memhub_govern::{AuditEvent, AuditLog, Outcome};
use memhub_types::time::{format_micros, now_micros};
use memhub_types::{ChangeFilter, ChangeOp, Error, ErrorCode, RenderedChange, Scope};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

/// `[webhooks]` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// Allow targets on private, loopback and link-local addresses (tests, an
    /// internal receiver on the same network). Off by default: a webhook URL must
    /// not reach the hub's own network.
    pub allow_private_targets: bool,
    /// Most changes in one delivery.
    pub batch_size: usize,
    /// Consecutive failed attempts after which a webhook is disabled.
    pub max_failures: u32,
    /// The first retry's delay; each next one doubles (with jitter), up to `retry_max_seconds`.
    pub retry_initial_ms: u64,
    pub retry_max_seconds: u64,
    /// A batch still failing this long after its first failure disables the webhook.
    pub retry_window_seconds: u64,
    /// How long one delivery may take.
    pub timeout_seconds: u64,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            allow_private_targets: false,
            batch_size: 100,
            max_failures: 20,
            retry_initial_ms: 5_000,
            retry_max_seconds: 3_600,
            retry_window_seconds: 86_400,
            timeout_seconds: 10,
        }
    }
}

/// What an admin sends to register a webhook.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWebhook {
    /// Where deliveries are POSTed (`http` or `https`).
    pub url: String,
    /// Only these operations (all when absent).
    #[serde(default)]
    pub ops: Option<Vec<ChangeOp>>,
    /// Only changes of memories from this source system.
    #[serde(default)]
    pub system_id: Option<String>,
    /// Only changes of memories of this kind.
    #[serde(default)]
    pub kind: Option<String>,
    /// Only changes of this user's memories.
    #[serde(default)]
    pub user_id: Option<String>,
}

/// A batch written down before it is sent: it is resent as it is until delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct InFlight {
    /// The changes after this sequence number ...
    pub after: i64,
    /// ... up to and including this one.
    pub through: i64,
    /// Its `webhook-id`.
    pub msg_id: String,
}

/// A registered webhook (never with its secret).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Webhook {
    pub id: String,
    pub tenant: String,
    pub url: String,
    pub ops: Option<Vec<ChangeOp>>,
    pub system_id: Option<String>,
    pub kind: Option<String>,
    pub user_id: Option<String>,
    #[serde(with = "memhub_types::time::serde_micros")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    /// Consecutive failed attempts.
    pub failures: u32,
    #[serde(skip)]
    pub first_failure_at: Option<i64>,
    #[serde(skip)]
    pub next_attempt_at: i64,
    /// Every change up to this sequence number was delivered (or is not for this webhook).
    pub delivered_through: i64,
    pub inflight: Option<InFlight>,
}

impl Webhook {
    fn filter(&self) -> ChangeFilter {
        ChangeFilter {
            system_id: self.system_id.clone(),
            kind: self.kind.clone(),
            user_id: self.user_id.clone(),
            ops: self.ops.clone(),
        }
    }
}

/// One delivery attempt.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Delivery {
    pub id: i64,
    pub webhook_id: String,
    /// The `webhook-id` header: the same for every attempt of one batch.
    pub msg_id: String,
    pub after: i64,
    pub through: i64,
    pub events: usize,
    /// 1 for the first attempt of the batch.
    pub attempt: u32,
    /// The receiver's HTTP status (absent when no answer came).
    pub status: Option<u16>,
    pub error: Option<String>,
    #[serde(with = "memhub_types::time::serde_micros")]
    #[schema(value_type = String, format = DateTime)]
    pub at: i64,
    pub duration_ms: u64,
}

/// A new webhook and its secret, shown this once.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CreatedWebhook {
    pub webhook: Webhook,
    /// The signing secret (`whsec_...`): verify deliveries with it. Not shown again.
    pub secret: String,
}

/// How often a replica that does not lead looks again whether it leads now.
const NOT_LEADING_RECHECK: Duration = Duration::from_secs(1);

/// Attempts kept per webhook in its delivery record.
const KEPT_DELIVERIES: usize = 1_000;

/// The webhooks of one hub: registration and the delivery loop.
pub struct Webhooks {
    store: Arc<dyn WebhookTable>,
    engine: Arc<Engine>,
    config: WebhookConfig,
    audit: Arc<AuditLog>,
    /// Wakes the delivery loop when a webhook is created or enabled.
    wake: tokio::sync::Notify,
    /// HTTP clients by checked target ([`client_for`](Self::client_for)).
    clients: std::sync::Mutex<HashMap<(Option<String>, SocketAddr), reqwest::Client>>,
}

/// Most HTTP clients kept (each holds its idle connections to one target).
const MAX_CLIENTS: usize = 256;

fn not_found(id: &str) -> Error {
    Error::new(ErrorCode::NotFound, format!("no webhook with id {id}"))
}

/// A delivery's body: the batch's changes in their wire form, spliced in as they
/// were rendered (each is a JSON object already), around an envelope serialized here.
fn body(webhook: &Webhook, batch: &InFlight, timestamp: i64, changes: &[RenderedChange]) -> Vec<u8> {
    let text = |s: &str| serde_json::to_string(s).expect("strings serialize");
    let mut body = format!(
        r#"{{"type":"memhub.changes","timestamp":{},"data":{{"webhook_id":{},"after":{},"through":{},"changes":["#,
        text(&format_micros(timestamp * 1_000_000)),
        text(&webhook.id),
        batch.after,
        batch.through,
    );
    for (i, c) in changes.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&c.json);
    }
    body.push_str("]}}");
    body.into_bytes()
}

/// The `webhook-id` of the batch of changes `(after, through]` of webhook `id`:
/// the same however often it is sent.
fn msg_id(id: &str, after: i64, through: i64) -> String {
    format!("msg_{}_{after}_{through}", id.trim_start_matches("wh_"))
}

impl Webhooks {
    /// Keep the webhooks in `store`: `webhooks.db` ([`SqliteWebhooks::in_data_dir`]) or the database replicas share.
    pub fn on(store: Arc<dyn WebhookTable>, engine: Arc<Engine>, config: WebhookConfig, audit: Arc<AuditLog>) -> Self {
        Webhooks { store, engine, config, audit, wake: tokio::sync::Notify::new(), clients: Default::default() }
    }

    pub fn config(&self) -> &WebhookConfig {
        &self.config
    }

    /// Register a webhook for `tenant`. It delivers changes committed from now on.
    pub async fn create(&self, tenant: &str, new: NewWebhook) -> Result<CreatedWebhook, Error> {
        let url = target::parse(&new.url)?;
        target::resolve(&url, self.config.allow_private_targets).await?;
        let webhook = Webhook {
            id: format!("wh_{}", uuid::Uuid::now_v7().simple()),
            tenant: tenant.into(),
            url: url.to_string(),
            ops: new.ops,
            system_id: new.system_id,
            kind: new.kind,
            user_id: new.user_id,
            created_at: now_micros(),
            enabled: true,
            disabled_reason: None,
            failures: 0,
            first_failure_at: None,
            next_attempt_at: 0,
            delivered_through: self.engine.last_change()?,
            inflight: None,
        };
        let secret = sign::new_secret()?;
        self.store.insert(&webhook, &secret)?;
        Ok(CreatedWebhook { webhook, secret })
    }

    pub fn list(&self, tenant: &str) -> Result<Vec<Webhook>, Error> {
        self.store.list(Some(tenant))
    }

    pub fn get(&self, tenant: &str, id: &str) -> Result<Webhook, Error> {
        self.store.get(Some(tenant), id)?.ok_or_else(|| not_found(id))
    }

    pub fn delete(&self, tenant: &str, id: &str) -> Result<(), Error> {
        if self.store.delete(tenant, id)? {
            Ok(())
        } else {
            Err(not_found(id))
        }
    }

    /// Enable (the failure run starts again; the batch in flight is retried now) or disable.
    pub fn set_enabled(&self, tenant: &str, id: &str, enabled: bool) -> Result<Webhook, Error> {
        let reason = (!enabled).then_some("disabled by an admin");
        if !self.store.set_enabled(tenant, id, enabled, reason)? {
            return Err(not_found(id));
        }
        self.wake.notify_one();
        self.get(tenant, id)
    }

    pub fn deliveries(&self, tenant: &str, id: &str, limit: usize) -> Result<Vec<Delivery>, Error> {
        self.get(tenant, id)?;
        self.store.deliveries(id, limit.clamp(1, KEPT_DELIVERIES))
    }

    /// Send the batch of an earlier delivery again, now, under its `webhook-id`
    /// (the position does not move: this is for a receiver that lost it).
    pub async fn redeliver(&self, tenant: &str, id: &str, delivery: i64) -> Result<Delivery, Error> {
        let webhook = self.get(tenant, id)?;
        let earlier = self
            .store
            .delivery(id, delivery)?
            .ok_or_else(|| Error::new(ErrorCode::NotFound, format!("webhook {id} has no delivery {delivery}")))?;
        let batch = InFlight { after: earlier.after, through: earlier.through, msg_id: earlier.msg_id };
        let (delivery, _) = self.send(&webhook, &batch, None, |_| Settle::Nothing).await?;
        Ok(delivery)
    }

    /// Deliver until `closing` turns true: wake on every published change and when
    /// a retry is due.
    pub async fn run(self: Arc<Self>, mut closing: tokio::sync::watch::Receiver<bool>) {
        let mut published = self.engine.watch_changes();
        loop {
            published.borrow_and_update();
            // Replicas over one database: only the leader delivers (each webhook's
            // position is shared, so two senders would send every batch twice).
            // `leading` is what the election last found; it moves within seconds.
            if !self.engine.leading() {
                tokio::select! {
                    _ = tokio::time::sleep(NOT_LEADING_RECHECK) => continue,
                    _ = closing.changed() => return,
                }
            }
            let wait = match self.deliver_due().await {
                // A batch went out: there may be more behind it, so go on at once
                // instead of waiting for the next write to wake the loop.
                Ok((_, true)) => Duration::ZERO,
                Ok((wait, false)) => wait,
                Err(e) => {
                    tracing::error!(error = %e, "webhook delivery round failed; retrying");
                    Duration::from_secs(1)
                }
            };
            if wait.is_zero() {
                if *closing.borrow() {
                    return;
                }
                continue;
            }
            tokio::select! {
                _ = published.changed() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
                _ = closing.changed() => return,
            }
            if *closing.borrow() {
                return;
            }
        }
    }

    /// One round: every enabled webhook that is due gets its next batch (all at
    /// once, so a slow receiver delays only its own). Returns how long until the
    /// next retry is due, and whether any batch was accepted.
    pub async fn deliver_due(&self) -> Result<(Duration, bool), Error> {
        let now = now_micros();
        let all = self.store.list(None)?;
        let due: Vec<&Webhook> = all.iter().filter(|w| w.enabled && w.next_attempt_at <= now).collect();
        let results = futures::future::join_all(due.iter().map(|w| self.deliver_next(w))).await;
        let mut accepted = false;
        for (w, r) in due.iter().zip(results) {
            match r {
                Ok(sent) => accepted |= sent,
                Err(e) => tracing::warn!(webhook = %w.id, error = %e, "webhook delivery failed"),
            }
        }
        let next = self
            .store
            .list(None)?
            .iter()
            .filter(|w| w.enabled && w.next_attempt_at > now)
            .map(|w| w.next_attempt_at - now_micros())
            .min();
        Ok((next.map_or(Duration::from_secs(5), |us| Duration::from_micros(us.max(1_000) as u64)), accepted))
    }

    /// Send the webhook's batch in flight, or its next one; whether one was accepted.
    async fn deliver_next(&self, webhook: &Webhook) -> Result<bool, Error> {
        let mut webhook = webhook.clone();
        // A new batch's changes were just read; a batch in flight is read again.
        let mut fresh = None;
        let batch = match webhook.inflight.clone() {
            Some(b) => b,
            None => {
                let (changes, next_after) =
                    self.page(&webhook, webhook.delivered_through, self.config.batch_size).await?;
                let Some(last) = changes.last() else {
                    if next_after > webhook.delivered_through {
                        let id = webhook.id.clone();
                        self.table(move |t| t.skip_to(&id, next_after)).await?;
                    }
                    return Ok(false);
                };
                let batch = InFlight {
                    after: webhook.delivered_through,
                    through: last.seq,
                    msg_id: msg_id(&webhook.id, webhook.delivered_through, last.seq),
                };
                let inflight = (webhook.id.clone(), batch.clone());
                self.table(move |t| t.set_inflight(&inflight.0, &inflight.1)).await?;
                webhook.inflight = Some(batch.clone());
                fresh = Some(changes);
                batch
            }
        };
        let failures = webhook.failures + 1;
        let settle = |ok: bool| match ok {
            true => Settle::Delivered,
            false => Settle::Failed { next_attempt_at: now_micros() + self.backoff(failures).as_micros() as i64 },
        };
        let (delivery, ok) = self.send(&webhook, &batch, fresh, settle).await?;
        if ok {
            return Ok(true);
        }
        let now = now_micros();
        let first_failure = webhook.first_failure_at.unwrap_or(now);
        let window = i64::try_from(self.config.retry_window_seconds).unwrap_or(i64::MAX).saturating_mul(1_000_000);
        let why = if failures >= self.config.max_failures {
            Some(format!("disabled after {failures} failed deliveries in a row"))
        } else if now.saturating_sub(first_failure) >= window {
            Some(format!("disabled: deliveries kept failing for {} s", self.config.retry_window_seconds))
        } else {
            None
        };
        if let Some(why) = why {
            tracing::warn!(webhook = %webhook.id, %why, last_error = ?delivery.error, "webhook disabled");
            self.store.set_enabled(&webhook.tenant, &webhook.id, false, Some(&why))?;
            self.audit(&webhook, "webhook.disabled", &delivery);
        }
        Ok(false)
    }

    /// Run `f` on the webhook table off the async runtime: its writes wait for the
    /// disk, and the runtime's few threads also serve every request and feed stream.
    async fn table<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn WebhookTable) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let table = self.store.clone();
        tokio::task::spawn_blocking(move || f(table.as_ref())).await.map_err(Error::internal)?
    }

    /// The wait before retry number `failures`: doubling from `retry_initial_ms`,
    /// capped, with jitter (a random 50–100 % of it) so receivers coming back are
    /// not hit by every sender at once.
    fn backoff(&self, failures: u32) -> Duration {
        let base = self.config.retry_initial_ms.saturating_mul(1u64 << failures.saturating_sub(1).min(30));
        let capped = base.min(self.config.retry_max_seconds.saturating_mul(1000));
        let jitter = getrandom::u64().unwrap_or(0) % (capped / 2 + 1);
        Duration::from_millis(capped - jitter)
    }

    /// POST one batch and record the attempt with what `settle` (given whether the
    /// receiver accepted it) makes of it. Returns it and whether it was accepted (2xx).
    /// `changes`: the batch's changes when the caller has them, else they are read from the log.
    async fn send(
        &self,
        webhook: &Webhook,
        batch: &InFlight,
        changes: Option<Vec<RenderedChange>>,
        settle: impl FnOnce(bool) -> Settle,
    ) -> Result<(Delivery, bool), Error> {
        let changes = match changes {
            Some(c) => c,
            None => self.batch_changes(webhook, batch).await?,
        };
        let timestamp = now_micros() / 1_000_000;
        let body = body(webhook, batch, timestamp, &changes);
        let (id, msg) = (webhook.id.clone(), batch.msg_id.clone());
        let (secret, attempts) = self.table(move |t| Ok((t.secret(&id)?, t.attempts(&id, &msg)?))).await?;
        let secret = secret.ok_or_else(|| not_found(&webhook.id))?;
        let signature = sign::signature(&secret, &batch.msg_id, timestamp, &body)?;
        let started = Instant::now();
        let outcome = self.post(webhook, &batch.msg_id, timestamp, &signature, body).await;
        let (status, error) = match outcome {
            Ok(s) if (200..300).contains(&s) => (Some(s), None),
            Ok(s) => (Some(s), Some(format!("the receiver answered {s}"))),
            Err(e) => (None, Some(e)),
        };
        let mut delivery = Delivery {
            id: 0,
            webhook_id: webhook.id.clone(),
            msg_id: batch.msg_id.clone(),
            after: batch.after,
            through: batch.through,
            events: changes.len(),
            attempt: attempts + 1,
            status,
            error,
            at: now_micros(),
            duration_ms: started.elapsed().as_millis() as u64,
        };
        let ok = delivery.error.is_none();
        let (record, settle) = (delivery.clone(), settle(ok));
        delivery.id = self
            .table(move |t| {
                let id = t.record(&record, settle)?;
                if id % 100 == 0 {
                    t.prune_deliveries(KEPT_DELIVERIES)?;
                }
                Ok(id)
            })
            .await?;
        self.audit(webhook, "webhook.deliver", &delivery);
        Ok((delivery, ok))
    }

    /// Up to `n` of `webhook`'s changes after `after`, in wire form, and the cursor
    /// past them: from the engine's window of recent changes when it holds them
    /// (rendered once, shared with the feed's streams), else from the store.
    async fn page(&self, webhook: &Webhook, after: i64, n: usize) -> Result<(Vec<RenderedChange>, i64), Error> {
        let (scope, filter) = (Scope::tenant(webhook.tenant.clone()), webhook.filter());
        if let Some(page) = self.engine.recent_rendered(&scope, after, &filter, n) {
            return Ok(page);
        }
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || {
            let page = engine.changes(&scope, after, &filter, Some(n))?;
            Ok((page.changes.iter().map(RenderedChange::from).collect(), page.next_after))
        })
        .await
        .map_err(Error::internal)?
    }

    /// The changes of a batch `(after, through]`, as the feed shows them.
    async fn batch_changes(&self, webhook: &Webhook, batch: &InFlight) -> Result<Vec<RenderedChange>, Error> {
        let n = self.config.batch_size.clamp(1, 1000);
        let mut out = Vec::new();
        let mut after = batch.after;
        while after < batch.through {
            let (changes, next_after) = self.page(webhook, after, n).await?;
            let done = changes.is_empty() || next_after <= after;
            out.extend(changes.into_iter().filter(|c| c.seq <= batch.through));
            if done {
                break;
            }
            after = next_after;
        }
        Ok(out)
    }

    /// One POST to the checked address. `Ok(status)` when the receiver answered.
    async fn post(
        &self,
        webhook: &Webhook,
        msg_id: &str,
        timestamp: i64,
        signature: &str,
        body: Vec<u8>,
    ) -> Result<u16, String> {
        let url = target::parse(&webhook.url).map_err(|e| e.message())?;
        let checked = target::resolve(&url, self.config.allow_private_targets).await.map_err(|e| e.message())?;
        let client = self.client_for(&checked)?;
        let resp = client
            .post(checked.url.clone())
            .header("content-type", "application/json")
            .header("user-agent", concat!("memhub/", env!("CARGO_PKG_VERSION")))
            .header("webhook-id", msg_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(|e| format!("no answer: {e}"))?;
        Ok(resp.status().as_u16())
    }

    /// The HTTP client for a checked target, kept so that its connections are reused:
    /// one per (host name, checked address), which it connects to whatever a second
    /// lookup would answer (no DNS-rebinding bypass).
    fn client_for(&self, checked: &target::Target) -> Result<reqwest::Client, String> {
        let key = (checked.domain.clone(), checked.addr);
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let mut client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(self.config.timeout_seconds.max(1)));
        if let Some(domain) = &checked.domain {
            // Connect to the address that was checked, not to a second lookup's answer.
            client = client.resolve(domain, checked.addr);
        }
        let client = client.build().map_err(|e| e.to_string())?;
        // Targets whose addresses keep changing must not grow this without bound.
        if clients.len() >= MAX_CLIENTS {
            clients.clear();
        }
        clients.insert(key, client.clone());
        Ok(client)
    }

    fn audit(&self, webhook: &Webhook, action: &str, d: &Delivery) {
        let outcome = if d.error.is_none() { Outcome::Ok } else { Outcome::Error };
        self.audit.record(AuditEvent {
            at: now_micros(),
            actor: format!("webhook:{}", webhook.id),
            role: "system".into(),
            tenant: webhook.tenant.clone(),
            action: action.into(),
            targets: vec![d.msg_id.clone()],
            filters: json!({"after": d.after, "through": d.through, "events": d.events, "attempt": d.attempt}),
            outcome,
            status: d.status.unwrap_or(0),
            client: webhook.url.clone(),
            request_id: String::new(),
        });
    }
}
