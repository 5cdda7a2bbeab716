//! Test helpers: run the real `memhub` binary as a child process on a free
//! loopback port and talk to it over HTTP.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[allow(unused_imports)]
pub use memhub_embed::test_model_dir as model_dir;

pub fn memhub_bin() -> &'static str {
    env!("CARGO_BIN_EXE_memhub")
}

/// This crate's directory in the checkout being tested. Read at run time: the
/// target dir is shared between checkouts, so a compile-time path can name another one.
pub fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from).unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The environment that puts a server of `data_dir` on the backend under test:
/// nothing for the embedded store; with `MEMHUB_TEST_BACKEND=postgres`, a database
/// of its own on the cluster at `MEMHUB_TEST_POSTGRES_URL` (made the first time,
/// its URL kept in `data_dir/postgres-url`, so a restart finds it again).
pub fn backend_env(data_dir: &Path) -> Vec<(&'static str, String)> {
    if !std::env::var("MEMHUB_TEST_BACKEND").is_ok_and(|b| b == "postgres") {
        return Vec::new();
    }
    std::fs::create_dir_all(data_dir).unwrap();
    let kept = data_dir.join("postgres-url");
    let url = std::fs::read_to_string(&kept).unwrap_or_else(|_| {
        let admin = std::env::var("MEMHUB_TEST_POSTGRES_URL")
            .expect("MEMHUB_TEST_BACKEND=postgres needs MEMHUB_TEST_POSTGRES_URL: run scripts/test.sh");
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("memhub_suite_{}_{}_{n}", std::process::id(), nanos % 1_000_000_000);
        let url = memhub_postgres::create_database(&admin, &name).unwrap();
        std::fs::write(&kept, &url).unwrap();
        url
    });
    vec![("MEMHUB_STORAGE_BACKEND", "postgres".into()), ("MEMHUB_POSTGRES_URL", url)]
}

/// Create an API key in `data_dir` with `memhub keys create ARGS` and return its secret.
pub fn create_key(data_dir: &Path, args: &[&str]) -> String {
    let out = Command::new(memhub_bin())
        .args(["keys", "create", "--data-dir"])
        .arg(data_dir)
        .args(args)
        .envs(backend_env(data_dir))
        .output()
        .expect("run memhub keys create");
    assert!(out.status.success(), "keys create {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let secret = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(secret.starts_with("mh_"), "{secret}");
    secret
}

/// Every audit record of the store in `data_dir`, on whichever backend the suite
/// runs, oldest first: read as a user reads them, with `memhub audit tail`.
#[allow(dead_code)]
pub fn audit_records(data_dir: &Path) -> Vec<memhub_govern::AuditRecord> {
    let out = Command::new(memhub_bin())
        .args(["audit", "--data-dir"])
        .arg(data_dir)
        .args(["tail", "--lines", "10000"])
        .envs(backend_env(data_dir))
        .output()
        .expect("run memhub audit tail");
    assert!(out.status.success(), "audit tail: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// What `memhub audit verify` reports of the store in `data_dir`, and whether it
/// found the chain intact (its exit status).
#[allow(dead_code)]
pub fn audit_verify(data_dir: &Path) -> (serde_json::Value, bool) {
    let out = Command::new(memhub_bin())
        .args(["audit", "--data-dir"])
        .arg(data_dir)
        .arg("verify")
        .envs(backend_env(data_dir))
        .output()
        .expect("run memhub audit verify");
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("audit verify printed no report ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    (report, out.status.success())
}

/// A `memhub serve` child process. Killed (SIGKILL) on drop if still running.
pub struct Server {
    pub child: Child,
    pub port: u16,
    pub base: String,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Server {
    /// Start on a fresh temporary data dir.
    pub fn start() -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = Server::start_in(tmp.path(), &[]);
        s._tmp = Some(tmp);
        s
    }

    /// Start with extra environment variables.
    pub fn start_with_env(env: &[(&str, &str)]) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = Server::start_in(tmp.path(), env);
        s._tmp = Some(tmp);
        s
    }

    /// Start on `data_dir` (kept after the server stops). The server picks its own
    /// port (`127.0.0.1:0`) and the port is read from its start-up log line, so
    /// parallel tests never race for a port another test's server may answer on.
    pub fn start_in(data_dir: &Path, env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(memhub_bin());
        cmd.args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("MEMHUB_LOG", "warn,memhub=info")
            .env("NO_COLOR", "1")
            // Tests that want the local encoder name its directory explicitly.
            .env("MEMHUB_MODEL_DIR", data_dir.join("no-model"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .envs(backend_env(data_dir));
        // The test's own settings win (a test of the PostgreSQL backend names its database).
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::spawn(cmd, data_dir)
    }

    /// Run a prepared `memhub serve` command (stderr piped) and wait for its port.
    pub fn spawn(mut cmd: Command, data_dir: &Path) -> Server {
        let mut child = cmd.spawn().expect("start memhub serve");
        let port = Self::read_port(child.stderr.take().expect("piped stderr"));
        Server { child, port, base: format!("http://127.0.0.1:{port}"), data_dir: data_dir.into(), _tmp: None }
    }

    /// Read the server's log until it says where it listens; a thread then copies the
    /// rest of its log to the test's stderr.
    fn read_port(stderr: std::process::ChildStderr) -> u16 {
        use std::io::BufRead;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                let plain: String = strip_ansi(&line);
                let port = plain
                    .contains("memhub listening")
                    .then(|| {
                        plain
                            .split_whitespace()
                            .find_map(|w| w.strip_prefix("addr=")?.rsplit(':').next()?.parse::<u16>().ok())
                    })
                    .flatten();
                match (port, &tx) {
                    (Some(p), Some(_)) => {
                        let _ = tx.take().map(|t| t.send(p));
                    }
                    _ => eprintln!("{line}"),
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(60)).expect("memhub did not report a listening address")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM and wait for a clean exit; returns the exit status code.
    pub fn terminate(&mut self) -> Option<i32> {
        Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("memhub did not exit after SIGTERM");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A small HTTP client returning `(status, json)`.
#[derive(Clone)]
pub struct Http {
    client: reqwest::Client,
    base: String,
}

impl Http {
    pub fn new(server: &Server) -> Http {
        Http { client: reqwest::Client::new(), base: server.base.clone() }
    }

    /// The full URL of `path` on this server.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn finish(resp: reqwest::RequestBuilder) -> (u16, Value) {
        let resp = resp.send().await.expect("request sent");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let json =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        (status, json)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        Self::finish(self.client.get(format!("{}{path}", self.base))).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        Self::finish(self.client.delete(format!("{}{path}", self.base))).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        Self::finish(self.client.post(format!("{}{path}", self.base)).json(body)).await
    }

    /// Like `post`, but a connection failure is an `Err` (for tests that kill the server).
    pub async fn try_post(&self, path: &str, body: &Value) -> Result<(u16, Value), reqwest::Error> {
        let resp = self.client.post(format!("{}{path}", self.base)).json(body).send().await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await?))
    }

    pub async fn patch(&self, path: &str, body: &Value) -> (u16, Value) {
        Self::finish(self.client.patch(format!("{}{path}", self.base)).json(body)).await
    }

    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>, headers: &[(&str, &str)]) -> (u16, Value) {
        let mut req = self.client.post(format!("{}{path}", self.base)).body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Self::finish(req).await
    }

    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
        let mut req = self.client.get(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Self::finish(req).await
    }
}

/// A 384-d vector pointing mostly along axis `i`.
pub fn axis_vector(i: usize) -> Vec<f32> {
    let mut v = vec![0.01f32; 384];
    v[i % 384] = 1.0;
    v
}

/// A `moto_server` (an S3 API; installed into `.venv` by scripts/test.sh) on a
/// free loopback port, killed on drop.
pub struct Moto {
    child: Child,
    pub url: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_moto() -> Moto {
    let bin = manifest_dir().join("../../.venv/bin/moto_server");
    assert!(
        bin.exists(),
        "moto_server is needed for this test: run scripts/test.sh (it installs moto[server] into .venv)"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start moto_server");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto_server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    Moto { child, url: format!("http://127.0.0.1:{port}") }
}

/// The keys in `bucket` (one listing page).
pub async fn list_keys(client: &reqwest::Client, moto: &Moto, bucket: &str) -> Vec<String> {
    let body = client.get(format!("{}/{bucket}?list-type=2", moto.url)).send().await.unwrap().text().await.unwrap();
    body.split("<Key>").skip(1).filter_map(|s| s.split("</Key>").next()).map(String::from).collect()
}

/// Write Session-Buddy-shaped DuckDB files with `scripts/duckdb-fixture.py` and the
/// test venv's DuckDB 1.5 (installed by scripts/test.sh).
pub fn duckdb_fixture(args: &[&str]) {
    let repo = manifest_dir().join("../..");
    let python = repo.join(".venv/bin/python");
    assert!(python.exists(), "run scripts/test.sh: it installs duckdb 1.5 into .venv");
    let out = Command::new(python).arg(repo.join("scripts/duckdb-fixture.py")).args(args).output().unwrap();
    assert!(out.status.success(), "fixture {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The value of the sample `series` (name and labels exactly as rendered) in a
/// Prometheus text scrape, if present.
pub fn metric_sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// One Server-Sent Event as a test reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: Value,
}

/// A reader of a `text/event-stream` response: events in order, comments skipped.
pub struct SseStream {
    resp: reqwest::Response,
    buf: String,
    /// Comment lines seen (heartbeats).
    pub comments: usize,
}

impl SseStream {
    /// `GET path` with `headers`; panics unless the answer is a 200 event stream.
    pub async fn open(base: &str, path: &str, headers: &[(&str, &str)]) -> SseStream {
        let mut req = reqwest::Client::new().get(format!("{base}{path}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("request sent");
        assert_eq!(resp.status().as_u16(), 200, "{path}");
        let kind = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        assert!(kind.starts_with("text/event-stream"), "{kind}");
        SseStream { resp, buf: String::new(), comments: 0 }
    }

    /// The next event, or `None` if none arrives within `wait` (or the stream ends).
    pub async fn next_within(&mut self, wait: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, "message".to_string(), String::new());
                let mut any = false;
                for line in block.lines() {
                    if line.starts_with(':') {
                        self.comments += 1;
                        continue;
                    }
                    let (field, value) =
                        line.split_once(':').map_or((line, ""), |(f, v)| (f, v.strip_prefix(' ').unwrap_or(v)));
                    any = true;
                    match field {
                        "id" => id = Some(value.to_string()),
                        "event" => event = value.to_string(),
                        "data" => data.push_str(value),
                        _ => {}
                    }
                }
                if any {
                    let data = serde_json::from_str(&data).unwrap_or(Value::String(data));
                    return Some(SseEvent { id, event, data });
                }
                continue;
            }
            let chunk = tokio::time::timeout_at(deadline, self.resp.chunk()).await.ok()?.ok()??;
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Events until `n` have arrived (panics after `wait`).
    pub async fn take(&mut self, n: usize, wait: Duration) -> Vec<SseEvent> {
        let mut out = Vec::new();
        while out.len() < n {
            match self.next_within(wait).await {
                Some(e) => out.push(e),
                None => panic!("only {} of {n} events arrived: {out:?}", out.len()),
            }
        }
        out
    }
}

/// `bytes`, gzip-compressed.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// Write `bytes` at `key` in a directory bucket.
pub fn put(bucket: &Path, key: &str, bytes: &[u8]) {
    let p = bucket.join(key);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

/// An Akosha upload: a manifest and `memories.json` compressed as `format` says.
pub fn akosha_upload(bucket: &Path, system: &str, upload: &str, conversations: &[Value], format: Option<&str>) {
    let body = serde_json::to_vec(&json!({ "conversations": conversations })).unwrap();
    let data = match format {
        Some("gzip") => gzip(&body),
        Some("zstd") => zstd::encode_all(&body[..], 3).unwrap(),
        _ => body,
    };
    let dir = format!("systems/{system}/{upload}");
    put(bucket, &format!("{dir}/memories.json"), &data);
    let manifest = json!({"uploaded_at": "2026-11-21T10:15:00Z", "conversation_count": conversations.len(), "version": "1.0",
        "compressed": format.is_some(), "compression_format": format, "files": ["memories.json"]});
    put(bucket, &format!("{dir}/manifest.json"), &serde_json::to_vec(&manifest).unwrap());
}

/// One Akosha conversation of user ann in project falcon.
pub fn conversation(id: &str, content: &str) -> Value {
    json!({"id": id, "content": content, "embedding": null, "timestamp": "2026-11-20T09:00:00",
           "source": "claude-code", "metadata": {"project": "falcon", "user_id": "ann"}})
}
