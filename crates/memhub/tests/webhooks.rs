//! Outgoing webhooks against the real server and a receiver that verifies every
//! delivery with the Standard Webhooks reference library (`webhook_receiver.py`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{manifest_dir, Http, Server};
use serde_json::{json, Value};

struct Receiver {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Receiver {
    fn start() -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        let python = manifest_dir().join("../../.venv/bin/python");
        assert!(python.exists(), "run scripts/test.sh, which installs standardwebhooks into .venv");
        let child = Command::new(python)
            .arg(manifest_dir().join("tests/webhook_receiver.py"))
            .arg(dir.path())
            .spawn()
            .expect("start the receiver");
        let started = Instant::now();
        let port = loop {
            if let Ok(p) = std::fs::read_to_string(dir.path().join("port")) {
                break p.trim().parse().unwrap();
            }
            assert!(started.elapsed() < Duration::from_secs(20), "the receiver did not start");
            std::thread::sleep(Duration::from_millis(50));
        };
        Receiver { child, dir, port }
    }

    fn set(&self, name: &str, value: &str) {
        std::fs::write(self.dir.path().join(name), value).unwrap();
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// Every finished delivery so far (requests still being answered are not in it).
    fn deliveries(&self) -> Vec<Value> {
        self.log().into_iter().filter(|e| e.get("msg_id").is_some()).collect()
    }

    fn log(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.dir.path().join("received.jsonl")).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    fn wait_for(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let started = Instant::now();
        loop {
            let got = self.deliveries();
            if done(&got) {
                return got;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "{what}: {got:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn env(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut v = vec![("MEMHUB_WEBHOOKS_ALLOW_PRIVATE_TARGETS", "true"), ("MEMHUB_WEBHOOKS_RETRY_INITIAL_MS", "200")];
    v.extend_from_slice(extra);
    v
}

fn note(id: &str) -> Value {
    json!({"system_id": "github", "memory_id": id, "kind": "note", "content": format!("hooked {id}")})
}

fn delivered_ids(deliveries: &[Value]) -> BTreeSet<String> {
    deliveries
        .iter()
        .filter(|d| d["status"] == 200)
        .flat_map(|d| d["memory_ids"].as_array().unwrap().iter().filter_map(|m| m.as_str().map(String::from)))
        .collect()
}

async fn register(http: &Http, receiver: &Receiver, extra: Value) -> String {
    let mut body = json!({"url": receiver.url()});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    let (status, created) = http.post("/v1/webhooks", &body).await;
    assert_eq!(status, 201, "{created}");
    let secret = created["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_"), "{created}");
    receiver.set("secret", secret);
    let id = created["webhook"]["id"].as_str().unwrap().to_string();
    let (_, listed) = http.get("/v1/webhooks").await;
    assert!(!listed.to_string().contains(secret), "the secret is shown once: {listed}");
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_signed_in_order_and_survive_a_kill_mid_delivery() {
    let receiver = Receiver::start();
    let tmp = tempfile::tempdir().unwrap();
    let data: PathBuf = tmp.path().into();
    let mut server = Server::start_in(&data, &env(&[("MEMHUB_WEBHOOKS_BATCH_SIZE", "5")]));
    let http = Http::new(&server);
    register(&http, &receiver, json!({"ops": ["created"]})).await;
    for i in 0..12 {
        assert_eq!(http.post("/v1/memories", &note(&format!("a{i}"))).await.0, 201);
    }
    let got = receiver.wait_for("12 memories delivered", |d| delivered_ids(d).len() == 12);
    assert!(got.iter().all(|d| d["verified"] == true), "every delivery verifies: {got:?}");
    assert!(got.iter().all(|d| d["seqs"].as_array().unwrap().len() <= 5), "batches of at most 5: {got:?}");
    let seqs: Vec<i64> =
        got.iter().flat_map(|d| d["seqs"].as_array().unwrap().iter().map(|s| s.as_i64().unwrap())).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in sequence order, once each: {seqs:?}");

    // Kill the server while the receiver holds a delivery open.
    receiver.set("delay_ms", "3000");
    for i in 0..6 {
        assert_eq!(http.post("/v1/memories", &note(&format!("b{i}"))).await.0, 201);
    }
    let started = Instant::now();
    while receiver.log().iter().filter(|e| e.get("started").is_some()).count() <= got.len() {
        assert!(started.elapsed() < Duration::from_secs(20), "no delivery started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill9();
    receiver.set("delay_ms", "0");
    let _server = Server::start_in(&data, &env(&[("MEMHUB_WEBHOOKS_BATCH_SIZE", "5")]));
    let all =
        receiver.wait_for("every acknowledged change delivered after the restart", |d| delivered_ids(d).len() == 18);
    assert!(all.iter().all(|d| d["verified"] == true));
    // A change delivered twice came both times under the same webhook-id.
    let mut ids_of_seq: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
    for d in &all {
        for s in d["seqs"].as_array().unwrap() {
            ids_of_seq.entry(s.as_i64().unwrap()).or_default().insert(d["msg_id"].as_str().unwrap().into());
        }
    }
    assert!(ids_of_seq.values().all(|ids| ids.len() == 1), "{ids_of_seq:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_gets_growing_gaps_then_the_webhook_is_disabled() {
    let receiver = Receiver::start();
    receiver.set("status", "500");
    let server = Server::start_with_env(&env(&[("MEMHUB_WEBHOOKS_MAX_FAILURES", "4")]));
    let http = Http::new(&server);
    let id = register(&http, &receiver, json!({})).await;
    assert_eq!(http.post("/v1/memories", &note("x1")).await.0, 201);
    let tries = receiver.wait_for("four attempts", |d| d.len() >= 4);
    let at: Vec<f64> = tries.iter().map(|d| d["at"].as_f64().unwrap()).collect();
    assert!(at[3] - at[2] > at[1] - at[0], "backoff grows: {at:?}");
    assert_eq!(tries.iter().map(|d| d["msg_id"].to_string()).collect::<BTreeSet<_>>().len(), 1, "one batch, one id");
    let started = Instant::now();
    let webhook = loop {
        let (_, w) = http.get(&format!("/v1/webhooks/{id}")).await;
        if w["enabled"] == false {
            break w;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "never disabled: {w}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(webhook["disabled_reason"].as_str().unwrap().contains("4 failed"), "{webhook}");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(receiver.deliveries().len(), 4, "a disabled webhook sends nothing");
    let (_, d) = http.get(&format!("/v1/webhooks/{id}/deliveries")).await;
    let attempts: Vec<i64> =
        d["deliveries"].as_array().unwrap().iter().map(|x| x["attempt"].as_i64().unwrap()).collect();
    assert_eq!(attempts, [4, 3, 2, 1], "{d}");

    // Re-enabled against a receiver that works again: the same batch goes through.
    receiver.set("status", "200");
    let (status, w) = http.patch(&format!("/v1/webhooks/{id}"), &json!({"enabled": true})).await;
    assert_eq!((status, w["enabled"].as_bool()), (200, Some(true)), "{w}");
    let ok = receiver.wait_for("delivered after re-enabling", |d| d.iter().any(|x| x["status"] == 200));
    assert_eq!(ok.last().unwrap()["msg_id"], tries[0]["msg_id"]);
    // A redelivery repeats a batch under its id.
    let (_, d) = http.get(&format!("/v1/webhooks/{id}/deliveries?limit=1")).await;
    let last = d["deliveries"][0]["id"].as_i64().unwrap();
    let (status, again) = http.post(&format!("/v1/webhooks/{id}/deliveries/{last}/redeliver"), &json!({})).await;
    assert_eq!((status, again["status"].as_i64()), (200, Some(200)), "{again}");
    assert_eq!(receiver.deliveries().last().unwrap()["msg_id"], tries[0]["msg_id"]);
    // Deleted: gone from the list.
    assert_eq!(http.delete(&format!("/v1/webhooks/{id}")).await.0, 200);
    assert_eq!(http.get(&format!("/v1/webhooks/{id}")).await.0, 404);
}

#[tokio::test]
async fn private_and_malformed_targets_are_refused() {
    let server = Server::start();
    let http = Http::new(&server);
    for url in ["http://127.0.0.1:9/hook", "http://localhost/", "http://169.254.169.254/latest", "http://[::1]:80/"] {
        let (status, v) = http.post("/v1/webhooks", &json!({"url": url})).await;
        assert_eq!((status, v["error"]["field"].as_str()), (400, Some("url")), "{url}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("private"), "{v}");
    }
    for url in ["ftp://example.com/", "not a url", "http://user:pw@example.com/"] {
        let (status, v) = http.post("/v1/webhooks", &json!({"url": url})).await;
        assert_eq!((status, v["error"]["field"].as_str()), (400, Some("url")), "{url}: {v}");
    }
    let (status, v) = http.post("/v1/webhooks", &json!({"url": "http://example.com/", "ops": ["exploded"]})).await;
    assert_eq!(status, 400, "{v}");
}

/// Whether this replica says it leads (runs the once-per-store jobs, delivery among them).
async fn leads(http: &Http) -> bool {
    http.get("/health").await.1["leader"] == true
}

async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < Duration::from_secs(20), "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Replicas over one database (the suite's PostgreSQL run): a webhook registered
/// through one replica gets the changes written through both, each once and in
/// order, from the leader alone; when the leader is killed, the next one goes on
/// from the shared position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_over_one_database_deliver_each_change_once() {
    if !std::env::var("MEMHUB_TEST_BACKEND").is_ok_and(|b| b == "postgres") {
        eprintln!(
            "replicas share a database only on the PostgreSQL backend (scripts/test.sh runs this suite on it too)"
        );
        return;
    }
    let receiver = Receiver::start();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = Server::start_in(dir_a.path(), &env(&[]));
    // B's data dir names A's database (backend_env keeps the URL there).
    std::fs::copy(dir_a.path().join("postgres-url"), dir_b.path().join("postgres-url")).unwrap();
    let (http_a, b) = (Http::new(&a), Server::start_in(dir_b.path(), &env(&[])));
    let http_b = Http::new(&b);
    until("A leads", || leads(&http_a)).await;
    assert!(!leads(&http_b).await, "one leader");
    let id = register(&http_b, &receiver, json!({"ops": ["created"]})).await;
    for i in 0..6 {
        assert_eq!(http_a.post("/v1/memories", &note(&format!("a{i}"))).await.0, 201);
        assert_eq!(http_b.post("/v1/memories", &note(&format!("b{i}"))).await.0, 201);
    }
    let got = receiver.wait_for("both replicas' writes delivered", |d| delivered_ids(d).len() == 12);
    assert!(got.iter().all(|d| d["verified"] == true), "{got:?}");
    let seqs: Vec<i64> =
        got.iter().flat_map(|d| d["seqs"].as_array().unwrap().iter().map(|s| s.as_i64().unwrap())).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "once each, in sequence order: {seqs:?}");
    // A records an attempt once the receiver has answered: B lists them all soon after.
    let recorded = || async {
        let (_, listed) = http_b.get(&format!("/v1/webhooks/{id}/deliveries")).await;
        listed["deliveries"].as_array().map(Vec::len)
    };
    until("B lists every attempt A made", async || recorded().await == Some(got.len())).await;

    a.kill9();
    until("B takes over", || leads(&http_b)).await;
    for i in 6..9 {
        assert_eq!(http_b.post("/v1/memories", &note(&format!("b{i}"))).await.0, 201);
    }
    let all = receiver.wait_for("delivered by the new leader", |d| delivered_ids(d).len() == 15);
    let mut ids_of_seq: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
    for d in all.iter().filter(|d| d["status"] == 200) {
        for s in d["seqs"].as_array().unwrap() {
            ids_of_seq.entry(s.as_i64().unwrap()).or_default().insert(d["msg_id"].as_str().unwrap().into());
        }
    }
    assert!(ids_of_seq.values().all(|ids| ids.len() == 1), "a change sent twice, under one id: {ids_of_seq:?}");
    assert_eq!(ids_of_seq.len(), 15, "{ids_of_seq:?}");
}
