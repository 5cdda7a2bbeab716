//! The change feed over HTTP: `GET /v1/events` (Server-Sent Events) and the MCP
//! `list_changes` tool, against the real server.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{create_key, Http, Server, SseEvent, SseStream};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);

fn note(memory_id: &str, user: Option<&str>) -> Value {
    json!({"system_id": "slack", "memory_id": memory_id, "kind": "note", "content": format!("feed note {memory_id}"), "user_id": user})
}

fn seqs(events: &[SseEvent]) -> Vec<i64> {
    events.iter().map(|e| e.id.as_deref().expect("every change has an id").parse().unwrap()).collect()
}

fn memory_ids(events: &[SseEvent]) -> Vec<String> {
    events.iter().map(|e| e.data["memory_id"].as_str().unwrap_or_default().to_string()).collect()
}

#[tokio::test]
async fn a_resumed_feed_delivers_every_change_once_in_order() {
    let server = Server::start();
    let http = Http::new(&server);
    let mut feed = SseStream::open(&server.base, "/v1/events?after=0&include=content", &[]).await;
    for i in 0..5 {
        let (status, v) = http.post("/v1/memories", &note(&format!("m{i}"), None)).await;
        assert_eq!(status, 201, "{v}");
    }
    let first = feed.take(3, WAIT).await;
    assert_eq!(memory_ids(&first), ["m0", "m1", "m2"]);
    assert!(first.iter().all(|e| e.event == "created"), "{first:?}");
    assert_eq!(first[0].data["op"], "created");
    assert_eq!(first[0].data["system_id"], "slack");
    assert_eq!(first[0].data["memory"]["content"], "feed note m0", "include=content carries the memory");
    let resume_at = first[2].id.clone().unwrap();
    drop(feed);

    // Changes while disconnected: an update and a delete among them.
    let (_, updated) = http
        .post(
            "/v1/memories",
            &json!({"system_id": "slack", "memory_id": "m0", "kind": "note", "content": "feed note m0, edited"}),
        )
        .await;
    assert_eq!(updated["status"], "updated");
    let id = updated["memory"]["id"].as_str().unwrap();
    assert_eq!(http.delete(&format!("/v1/memories/{id}")).await.0, 200);

    let mut feed = SseStream::open(&server.base, "/v1/events", &[("Last-Event-ID", &resume_at)]).await;
    let rest = feed.take(4, WAIT).await;
    assert_eq!(memory_ids(&rest), ["m3", "m4", "m0", "m0"]);
    assert_eq!(rest.iter().map(|e| e.event.as_str()).collect::<Vec<_>>(), ["created", "created", "updated", "deleted"]);
    let all: Vec<i64> = seqs(&first).into_iter().chain(seqs(&rest)).collect();
    assert!(all.windows(2).all(|w| w[0] < w[1]), "in order, no change twice: {all:?}");
    assert!(rest[0].data.get("memory").is_none(), "content only when asked for");
    assert!(feed.next_within(Duration::from_millis(300)).await.is_none(), "nothing more");

    // Live: a change made now arrives on the open stream.
    http.post("/v1/memories", &note("live", None)).await;
    let live = feed.take(1, WAIT).await;
    assert_eq!(memory_ids(&live), ["live"]);

    // Without a position the stream starts with the next change.
    let mut fresh = SseStream::open(&server.base, "/v1/events", &[]).await;
    assert!(fresh.next_within(Duration::from_millis(300)).await.is_none());
    http.post("/v1/memories", &note("after-connect", None)).await;
    assert_eq!(memory_ids(&fresh.take(1, WAIT).await), ["after-connect"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_changes_arrive_in_sequence_order() {
    let server = Server::start();
    let mut feed = SseStream::open(&server.base, "/v1/events?after=0&ops=created", &[]).await;
    let writers: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|w| {
            let http = Http::new(&server);
            tokio::spawn(async move {
                for i in 0..40 {
                    let (status, v) = http.post("/v1/memories", &note(&format!("{w}{i}"), None)).await;
                    assert_eq!(status, 201, "{v}");
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let events = feed.take(80, WAIT).await;
    let s = seqs(&events);
    assert!(s.windows(2).all(|w| w[0] < w[1]), "{s:?}");
    let ids: HashSet<String> = memory_ids(&events).into_iter().collect();
    assert_eq!(ids.len(), 80);
    // Each writer's own changes keep their order.
    for w in ["a", "b"] {
        let mine: Vec<usize> =
            memory_ids(&events).iter().filter(|m| m.starts_with(w)).map(|m| m[1..].parse().unwrap()).collect();
        assert_eq!(mine, (0..40).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn a_user_key_follows_only_its_own_memories() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let admin = create_key(dir, &["--role", "admin", "--tenant", "acme"]);
    let ann = create_key(dir, &["--role", "user", "--tenant", "acme", "--user", "ann"]);
    let other = create_key(dir, &["--role", "admin", "--tenant", "globex"]);
    let server = Server::start_in(dir, &[("MEMHUB_RATE_PER_SECOND", "0")]);
    let bearer = |k: &str| format!("Bearer {k}");
    let mut anns = SseStream::open(&server.base, "/v1/events?after=0", &[("Authorization", &bearer(&ann))]).await;
    let mut admins = SseStream::open(&server.base, "/v1/events?after=0", &[("Authorization", &bearer(&admin))]).await;
    let client = reqwest::Client::new();
    let post = |key: String, body: Value| {
        let req = client.post(format!("{}/v1/memories", server.base)).bearer_auth(key).json(&body);
        async move { assert_eq!(req.send().await.unwrap().status().as_u16(), 201) }
    };
    post(admin.clone(), note("bob-1", Some("bob"))).await;
    post(ann.clone(), note("ann-1", None)).await;
    post(other.clone(), note("globex-1", Some("ann"))).await;
    post(admin.clone(), note("bob-2", Some("bob"))).await;
    post(ann.clone(), note("ann-2", None)).await;
    assert_eq!(memory_ids(&anns.take(2, WAIT).await), ["ann-1", "ann-2"]);
    assert!(anns.next_within(Duration::from_millis(300)).await.is_none(), "no other user's or tenant's change");
    assert_eq!(memory_ids(&admins.take(4, WAIT).await), ["bob-1", "ann-1", "bob-2", "ann-2"]);
    assert!(admins.next_within(Duration::from_millis(300)).await.is_none(), "no other tenant's change");
    // A filter cannot widen the scope.
    let mut widened =
        SseStream::open(&server.base, "/v1/events?after=0&user_id=bob", &[("Authorization", &bearer(&ann))]).await;
    assert!(widened.next_within(Duration::from_millis(300)).await.is_none());
    // Without credentials: refused like any read.
    let resp = client.get(format!("{}/v1/events", server.base)).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
}

#[tokio::test]
async fn bad_feed_requests_are_refused_naming_the_field() {
    let server = Server::start();
    let http = Http::new(&server);
    let (status, v) = http.get("/v1/events?ops=created,exploded").await;
    assert_eq!((status, v["error"]["field"].as_str()), (400, Some("ops")), "{v}");
    let (status, v) = http.get("/v1/events?after=-3").await;
    assert_eq!((status, v["error"]["field"].as_str()), (400, Some("after")), "{v}");
    let (status, v) = http.get("/v1/events?include=everything").await;
    assert_eq!((status, v["error"]["field"].as_str()), (400, Some("include")), "{v}");
    let (status, v) = http.get_with("/v1/events", &[("Last-Event-ID", "yesterday")]).await;
    assert_eq!((status, v["error"]["field"].as_str()), (400, Some("Last-Event-ID")), "{v}");
}

#[tokio::test]
async fn a_reader_older_than_the_retained_log_gets_reset_first() {
    let server =
        Server::start_with_env(&[("MEMHUB_EVENTS_RETENTION_SECONDS", "0"), ("MEMHUB_PURGE_INTERVAL_SECONDS", "1")]);
    let http = Http::new(&server);
    for i in 0..3 {
        http.post("/v1/memories", &note(&format!("old{i}"), None)).await;
    }
    // The purge job prunes the log (retention 0: everything older than now). Its
    // first round may run between the writes and prune only some: wait for the
    // round that takes them all.
    let mut waited = 0;
    loop {
        let (_, page) = http
            .post(
                "/mcp",
                &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "list_changes", "arguments": {"after": 0}}}),
            )
            .await;
        let result = &page["result"]["structuredContent"];
        if result["reset"] == true && result["count"] == 0 {
            break;
        }
        waited += 1;
        assert!(waited < 100, "the log was never pruned: {page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut feed = SseStream::open(&server.base, "/v1/events?after=0", &[]).await;
    http.post("/v1/memories", &note("new", None)).await;
    let events = feed.take(2, WAIT).await;
    assert_eq!(events[0].event, "reset", "{events:?}");
    assert_eq!(events[0].data["after"], 0);
    assert_eq!(memory_ids(&events[1..]), ["new"]);
}
