//! The change feed: `GET /v1/events`, every committed change the caller may read,
//! as Server-Sent Events, oldest first from a sequence number, then live.
//!
//! The stream reads the change log page by page (the engine's in-memory window of
//! recent changes while it keeps up, the store when it is far behind) and waits on
//! the engine's publish signal when it has caught up: nothing is buffered per
//! subscriber, so a slow consumer only falls behind in the log and never slows a
//! writer. A consumer that asks for a change older than the retained log gets a
//! `reset` event first (it missed changes and must list again), never a silent gap.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Extension;
use memhub_engine::Engine;
use memhub_types::{Change, ChangeFilter, ChangeOp, Error, ErrorCode, Scope};
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::IntoParams;

use crate::auth::Caller;
use crate::http::{blocking, ApiError, ApiQuery, ApiResult};
use crate::AppState;
use memhub_govern::Permission;

/// How often an idle stream sends a comment, so proxies keep it open.
pub const HEARTBEAT: Duration = Duration::from_secs(15);

/// Changes read from the log per page.
const PAGE: usize = 500;

/// The query of `GET /v1/events`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Start after this sequence number (`0`: every retained change). Without it
    /// (and without `Last-Event-ID`) the stream starts with the next change.
    #[serde(default, deserialize_with = "memhub_types::memory::whole::option")]
    #[param(value_type = Option<u64>)]
    pub after: Option<u64>,
    /// Only changes of memories from this source system.
    pub system_id: Option<String>,
    /// Only changes of memories of this kind.
    pub kind: Option<String>,
    /// Only changes of this user's memories.
    pub user_id: Option<String>,
    /// Only these operations, comma-separated (`created,updated`).
    pub ops: Option<String>,
    /// `content`: each event of a memory still in the store carries it (as `memory`).
    pub include: Option<String>,
}

/// Parse `ops=created,updated` into operations, naming a bad one.
pub fn parse_ops(ops: Option<&str>) -> Result<Option<Vec<ChangeOp>>, Error> {
    let Some(ops) = ops.filter(|s| !s.trim().is_empty()) else { return Ok(None) };
    ops.split(',')
        .map(str::trim)
        .map(|op| {
            ChangeOp::parse(op).ok_or_else(|| {
                let known: Vec<&str> = ChangeOp::ALL.iter().map(|o| o.as_str()).collect();
                Error::field(ErrorCode::InvalidField, "ops", format!("{op:?} is not one of {}", known.join(", ")))
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// A change as the feed and `list_changes` show it; with `memory` when asked for
/// and the memory is still readable.
pub fn change_json(c: &Change, memory: Option<memhub_types::Memory>) -> Value {
    let mut v = serde_json::to_value(c).expect("changes serialize");
    if let Some(mut m) = memory {
        m.embedding = None;
        v["memory"] = serde_json::to_value(m).expect("memories serialize");
    }
    v
}

/// The memory a change is about, if the reader asked for content and may still read it.
fn content_of(engine: &Engine, scope: &Scope, c: &Change) -> Option<memhub_types::Memory> {
    if !c.op.leaves_memory_in_store() && c.op != ChangeOp::Frozen {
        return None;
    }
    engine.get(scope, &c.id).ok()
}

struct Feed {
    engine: Arc<Engine>,
    scope: Scope,
    filter: ChangeFilter,
    content: bool,
    after: i64,
    ready: VecDeque<Event>,
    published: tokio::sync::watch::Receiver<i64>,
    closing: tokio::sync::watch::Receiver<bool>,
    /// A read failed: the stream ends after telling the consumer.
    failed: bool,
}

impl Feed {
    /// The next event: from what was read already, else the next page of the log,
    /// else the next change published. `None` when the server shuts down.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Some(e);
            }
            if self.failed || *self.closing.borrow() {
                return None;
            }
            // Marked seen before reading, so a change published during the read wakes the wait below.
            self.published.borrow_and_update();
            let next_after = match self.read_page().await {
                Ok(next_after) => next_after,
                Err(e) => {
                    tracing::warn!(error = %e, "change feed read failed; ending the stream");
                    self.failed = true;
                    return Some(Event::default().event("error").data(e.to_json().to_string()));
                }
            };
            let moved = next_after != self.after;
            self.after = next_after;
            if !self.ready.is_empty() || moved {
                continue;
            }
            tokio::select! {
                changed = self.published.changed() => if changed.is_err() { return None },
                _ = self.closing.changed() => return None,
            }
        }
    }

    /// Queue the events of the next page after `self.after`; returns the page's cursor.
    /// A reader that keeps up is served from the engine's window of recent changes,
    /// on the runtime, in the wire form rendered once for every stream; one far
    /// behind, or one that wants content, reads the store on a blocking thread.
    async fn read_page(&mut self) -> Result<i64, Error> {
        let event =
            |seq: i64, op: ChangeOp, data: &str| Event::default().id(seq.to_string()).event(op.as_str()).data(data);
        if !self.content {
            if let Some((changes, next_after)) =
                self.engine.recent_rendered(&self.scope, self.after, &self.filter, PAGE)
            {
                self.ready.extend(changes.iter().map(|c| event(c.seq, c.op, &c.json)));
                return Ok(next_after);
            }
        }
        let (engine, scope, filter, after, content) =
            (self.engine.clone(), self.scope.clone(), self.filter.clone(), self.after, self.content);
        let (page, memories) = blocking(move || {
            let page = engine.changes(&scope, after, &filter, Some(PAGE))?;
            let memories: Vec<_> =
                page.changes.iter().map(|c| if content { content_of(&engine, &scope, c) } else { None }).collect();
            Ok((page, memories))
        })
        .await?;
        if page.reset {
            let data = json!({
                "after": self.after,
                "message": "changes after this sequence number were pruned from the log; list again, then follow the events after this one"
            });
            self.ready.push_back(Event::default().event("reset").data(data.to_string()));
        }
        for (c, m) in page.changes.iter().zip(memories) {
            let data = match m {
                Some(m) => change_json(c, Some(m)).to_string(),
                None => c.to_json(),
            };
            self.ready.push_back(event(c.seq, c.op, &data));
        }
        Ok(page.next_after)
    }
}

/// Every change the caller may read, as Server-Sent Events: `id` is the change's
/// sequence number, `event` its operation, `data` the change as JSON. Resume with
/// `Last-Event-ID` (browsers send it on reconnect) or `?after=`.
#[utoipa::path(get, path = "/v1/events", params(EventsQuery, ("Last-Event-ID" = Option<String>, Header, description = "resume after this change")),
    responses((status = 200, description = "text/event-stream of changes", content_type = "text/event-stream"), (status = 400, description = "invalid filter")))]
pub async fn events(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> ApiResult<Sse<impl futures::Stream<Item = Result<Event, Infallible>>>> {
    caller.require(Permission::Read)?;
    let last_event = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()).ok_or_else(|| {
            ApiError(Error::field(ErrorCode::InvalidField, "Last-Event-ID", "must be a change sequence number"))
        })?),
    };
    let content = match q.include.as_deref() {
        None | Some("") => false,
        Some("content") => true,
        Some(other) => {
            return Err(ApiError(Error::field(
                ErrorCode::InvalidField,
                "include",
                format!("{other:?} is not known; the one value is \"content\""),
            )))
        }
    };
    let filter =
        ChangeFilter { system_id: q.system_id, kind: q.kind, user_id: q.user_id, ops: parse_ops(q.ops.as_deref())? };
    let engine = state.engine.clone();
    let after = match last_event.or(q.after) {
        Some(n) => i64::try_from(n).unwrap_or(i64::MAX),
        None => {
            let engine = engine.clone();
            blocking(move || engine.last_change()).await?
        }
    };
    let feed = Feed {
        published: engine.watch_changes(),
        engine,
        scope: caller.access.read.clone(),
        filter,
        content,
        after,
        ready: VecDeque::new(),
        closing: state.closing.subscribe(),
        failed: false,
    };
    let stream = futures::stream::unfold(feed, |mut feed| async move { feed.next().await.map(|e| (Ok(e), feed)) });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(HEARTBEAT).text("heartbeat")))
}
