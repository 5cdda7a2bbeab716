//! `storage.backend = "postgres"`: the server keeps its memories in PostgreSQL
//! (`MEMHUB_TEST_POSTGRES_URL`, a cluster `scripts/test.sh` starts) and only its
//! derived indexes in the data dir, so a second server with an empty data dir
//! serves the same memories.

mod common;

use common::{axis_vector, Http, Server};
use serde_json::{json, Value};

fn fresh_database() -> String {
    let admin = std::env::var("MEMHUB_TEST_POSTGRES_URL").expect(
        "MEMHUB_TEST_POSTGRES_URL names a PostgreSQL database to create test databases from: run scripts/test.sh",
    );
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    memhub_postgres::create_database(&admin, &format!("memhub_server_{}_{}", std::process::id(), nanos % 1_000_000_000))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_an_empty_data_dir_serves_what_another_acknowledged_before_it_was_killed() {
    let url = fresh_database();
    let env = [("MEMHUB_STORAGE_BACKEND", "postgres"), ("MEMHUB_POSTGRES_URL", url.as_str())];
    let first_dir = tempfile::tempdir().unwrap();
    let mut first = Server::start_in(first_dir.path(), &env);
    let http = Http::new(&first);
    let memories: Vec<Value> = (0..20)
        .map(|i| {
            json!({"system_id": "pg", "memory_id": format!("m{i}"), "kind": "note",
                   "content": format!("deploy note number {i} about the tuesday release"), "embedding": axis_vector(i)})
        })
        .collect();
    let (status, out) = http.post("/v1/memories/batch", &json!({ "memories": memories })).await;
    assert_eq!((status, out["stored"].clone()), (200, json!(20)), "{out}");
    let (status, one) = http
        .post(
            "/v1/memories",
            &json!({"system_id": "pg", "memory_id": "single", "kind": "note", "content": "the rollback plan"}),
        )
        .await;
    assert_eq!(status, 201, "{one}");
    // Acknowledged, then killed: nothing graceful runs.
    first.kill9();
    assert!(!first_dir.path().join("memhub.db").exists(), "memories are not kept in the data dir");

    let second_dir = tempfile::tempdir().unwrap();
    let second = Server::start_in(second_dir.path(), &env);
    let http = Http::new(&second);
    let (_, stats) = http.get("/v1/stats").await;
    assert_eq!(stats["memories"], 21, "{stats}");
    let (status, found) = http.post("/v1/search", &json!({"query": "rollback plan", "limit": 3})).await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["results"][0]["memory_id"], "single", "{found}");
    let (_, found) = http.post("/v1/search", &json!({"query_embedding": axis_vector(7), "limit": 1})).await;
    assert_eq!(found["results"][0]["memory_id"], "m7", "{found}");
    let id = one["memory"]["id"].as_str().unwrap();
    let (status, got) = http.get(&format!("/v1/memories/{id}")).await;
    assert_eq!((status, got["content"].clone()), (200, json!("the rollback plan")), "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_backend_without_a_url_refuses_to_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::memhub_bin())
        .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("MEMHUB_STORAGE_BACKEND", "postgres")
        .env_remove("MEMHUB_POSTGRES_URL")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("storage.postgres.url"), "{stderr}");
}

/// A POST answered with `(status, json, X-Memhub-Seq)`.
async fn post_seq(http: &Http, path: &str, body: &Value, headers: &[(&str, String)]) -> (u16, Value, Option<i64>) {
    let mut req = reqwest::Client::new().post(http.url(path)).json(body);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = req.send().await.unwrap();
    let seq = resp.headers().get("x-memhub-seq").and_then(|v| v.to_str().ok()?.parse().ok());
    (resp.status().as_u16(), resp.json().await.unwrap(), seq)
}

fn note(key: &str, content: &str) -> Value {
    json!({"system_id": "pg", "memory_id": key, "kind": "note", "content": content})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_over_one_database_read_each_others_writes() {
    let url = fresh_database();
    let env = [
        ("MEMHUB_STORAGE_BACKEND", "postgres"),
        ("MEMHUB_POSTGRES_URL", url.as_str()),
        ("MEMHUB_READ_WAIT_MS", "2000"),
    ];
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (Server::start_in(dir_a.path(), &env), Server::start_in(dir_b.path(), &env));
    let (http_a, http_b) = (Http::new(&a), Http::new(&b));

    // With the write's sequence number, B answers at once with the write in it.
    let (status, stored, seq) =
        post_seq(&http_a, "/v1/memories", &note("heron", "the heron nests by the weir"), &[]).await;
    assert_eq!(status, 201, "{stored}");
    let seq = seq.expect("a write's response names its change");
    let query = json!({"query": "heron weir", "semantic_ratio": 0.0});
    let (status, found, applied) = post_seq(&http_b, "/v1/search", &query, &[("X-Memhub-Seq", seq.to_string())]).await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["results"][0]["memory_id"], "heron", "{found}");
    assert!(applied.unwrap() >= seq, "B says it has applied the write");
    let id = stored["memory"]["id"].as_str().unwrap();
    let (status, got) = http_b.get(&format!("/v1/memories/{id}?min_seq={seq}")).await;
    assert_eq!((status, got["content"].clone()), (200, json!("the heron nests by the weir")), "{got}");
    // min_seq is the replica's, not the handler's: a strict query (the audit log's) still parses.
    let (status, audit) = http_b.get(&format!("/v1/audit?limit=1&min_seq={seq}")).await;
    assert_eq!(status, 200, "{audit}");

    // Without it, B still has the write within the follower's lag (a commit wakes it).
    let (status, _, _) = post_seq(&http_a, "/v1/memories", &note("kite", "a red kite over the ridge"), &[]).await;
    assert_eq!(status, 201);
    let started = std::time::Instant::now();
    loop {
        let (_, found) = http_b.post("/v1/search", &json!({"query": "kite ridge", "semantic_ratio": 0.0})).await;
        if found["results"][0]["memory_id"] == "kite" {
            break;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "B never saw A's write: {found}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // A write on B, read on A by its number; a delete on A, gone on B by its number.
    let (_, _, seq) = post_seq(&http_b, "/v1/memories", &note("egret", "an egret wades the shallows"), &[]).await;
    let (_, found, _) = post_seq(
        &http_a,
        "/v1/search",
        &json!({"query": "egret", "semantic_ratio": 0.0}),
        &[("X-Memhub-Seq", seq.unwrap().to_string())],
    )
    .await;
    assert_eq!(found["results"][0]["memory_id"], "egret", "{found}");
    let resp = reqwest::Client::new().delete(http_a.url(&format!("/v1/memories/{id}"))).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let seq: i64 = resp.headers()["x-memhub-seq"].to_str().unwrap().parse().unwrap();
    let (status, gone) = http_b.get_with(&format!("/v1/memories/{id}"), &[("X-Memhub-Seq", &seq.to_string())]).await;
    assert_eq!(status, 404, "{gone}");

    // Bad and impossible numbers are refused, naming the header.
    let (status, err) = http_b.get_with("/v1/stats", &[("X-Memhub-Seq", "soon")]).await;
    assert_eq!((status, err["error"]["field"].clone()), (400, json!("X-Memhub-Seq")), "{err}");
    let (status, err) = http_b.get_with("/v1/stats", &[("X-Memhub-Seq", "999999")]).await;
    assert_eq!((status, err["error"]["code"].clone()), (400, json!("invalid_field")), "{err}");

    // Both replicas are ready and say how far behind they are.
    for http in [&http_a, &http_b] {
        let (status, health) = http.get("/health").await;
        assert_eq!((status, health["ready"].clone()), (200, json!(true)), "{health}");
        assert!(health["behind"].as_i64().unwrap() < 1000, "{health}");
        assert!(health["applied_seq"].as_i64().unwrap() >= seq, "{health}");
    }
}

/// Replica A is killed mid-ingest: what it acknowledged is in the database and
/// searchable on B; A restarts on its old data dir and catches up from its
/// persisted text index (not from scratch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_ingest_loses_no_acknowledged_write_and_catches_up_without_a_rebuild() {
    let url = fresh_database();
    let env = [("MEMHUB_STORAGE_BACKEND", "postgres"), ("MEMHUB_POSTGRES_URL", url.as_str())];
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = Server::start_in(dir_a.path(), &env);
    let b = Server::start_in(dir_b.path(), &env);
    let (http_a, http_b) = (Http::new(&a), Http::new(&b));
    // A first batch, taken into A's persisted text index.
    let batch = |n: usize| -> Value {
        json!({"memories": (0..50).map(|i| note(&format!("b{n}-{i}"), &format!("word{n}x{i} ingest"))).collect::<Vec<_>>()})
    };
    let (status, out) = http_a.post("/v1/memories/batch", &batch(0)).await;
    assert_eq!((status, out["stored"].clone()), (200, json!(50)), "{out}");
    let started = std::time::Instant::now();
    while http_a.get("/v1/stats").await.1["index"]["pending_text"] != 0 {
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "A's text index never took the batch");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Batches keep coming while A is killed.
    let writer = {
        let http = http_a.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for n in 1.. {
                match http.try_post("/v1/memories/batch", &batch(n)).await {
                    Ok((200, out)) if out["stored"] == 50 => acked.push(n),
                    _ => return acked,
                }
            }
            acked
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    a.kill9();
    let acked = writer.await.unwrap();
    assert!(!acked.is_empty(), "some batches were acknowledged before the kill");
    let (_, stats) = http_b.get("/v1/stats").await;
    let total = stats["memories"].as_u64().unwrap();
    assert!(total >= 50 * (1 + acked.len() as u64), "{stats}");
    for n in acked.iter().copied().chain([0]) {
        let (_, found) =
            http_b.post("/v1/search", &json!({"query": format!("word{n}x7"), "semantic_ratio": 0.0})).await;
        assert_eq!(found["results"][0]["memory_id"], format!("b{n}-7"), "batch {n} is searchable on B: {found}");
    }

    // A comes back on its data dir: it catches up from what it had, not from scratch.
    let a = Server::start_in(dir_a.path(), &env);
    let http_a = Http::new(&a);
    let (_, stats) = http_a.get("/v1/stats").await;
    assert_eq!(stats["memories"].as_u64().unwrap(), total, "{stats}");
    // (The text index commits as it drains; the vector graph is saved every minute,
    // and these memories have no vectors.)
    let caught_text = stats["index"]["caught_up_text"].as_u64().unwrap();
    assert!(caught_text < total, "the text index resumed from its checkpoint, not rebuilt: {stats}");
    let last = acked.last().copied().unwrap_or(0);
    let (_, found) = http_a.post("/v1/search", &json!({"query": format!("word{last}x3"), "semantic_ratio": 0.0})).await;
    assert_eq!(found["results"][0]["memory_id"], format!("b{last}-3"), "{found}");
}

async fn leader(http: &Http) -> bool {
    http.get("/health").await.1["leader"] == true
}

async fn purged(http: &Http) -> f64 {
    let scrape = reqwest::get(http.url("/metrics")).await.unwrap().text().await.unwrap();
    common::metric_sample(&scrape, "memhub_changes_total{op=\"purged\"}").unwrap_or(0.0)
}

/// Wait (bounded) until `check` holds.
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let started = std::time::Instant::now();
    while !check().await {
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "never: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Jobs that must run once per store run on the elected replica only; when it is
/// killed, another takes the leader lock within seconds and runs them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_leader_is_killed_another_replica_takes_over_its_jobs() {
    let url = fresh_database();
    let env = [
        ("MEMHUB_STORAGE_BACKEND", "postgres"),
        ("MEMHUB_POSTGRES_URL", url.as_str()),
        ("MEMHUB_PURGE_INTERVAL_SECONDS", "1"),
    ];
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = Server::start_in(dir_a.path(), &env);
    let http_a = Http::new(&a);
    eventually("A leads", || leader(&http_a)).await;
    let b = Server::start_in(dir_b.path(), &env);
    let http_b = Http::new(&b);
    let expiring = |key: &str| {
        let soon = memhub_types::time::format_micros(memhub_types::time::now_micros() + 1_000_000);
        json!({"system_id": "pg", "memory_id": key, "kind": "note", "content": "short-lived", "expires_at": soon})
    };
    let (status, out) = http_b.post("/v1/memories", &expiring("first")).await;
    assert_eq!(status, 201, "{out}");
    eventually("A purges what expired", || async { purged(&http_a).await >= 1.0 }).await;
    assert!(!leader(&http_b).await, "one leader at a time");
    assert_eq!(purged(&http_b).await, 0.0, "B ran no purge while A led");

    a.kill9();
    eventually("B takes over", || leader(&http_b)).await;
    let (status, out) = http_b.post("/v1/memories", &expiring("second")).await;
    assert_eq!(status, 201, "{out}");
    eventually("B purges what expired", || async { purged(&http_b).await >= 1.0 }).await;
}

/// `memhub keys create ARGS` against the database in `env`: the secret.
fn create_key_in(data_dir: &std::path::Path, env: &[(&str, &str)], args: &[&str]) -> String {
    let out = std::process::Command::new(common::memhub_bin())
        .args(["keys", "create", "--data-dir"])
        .arg(data_dir)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Keys live in the database: a key made once works on every replica, and one
/// revoked through A is refused by B on its next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_on_one_replica_is_refused_by_the_other_at_once() {
    let url = fresh_database();
    let env = [("MEMHUB_STORAGE_BACKEND", "postgres"), ("MEMHUB_POSTGRES_URL", url.as_str())];
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let admin = create_key_in(dir_a.path(), &env, &["--role", "admin", "--tenant", "default"]);
    let user = create_key_in(dir_a.path(), &env, &["--role", "user", "--tenant", "default", "--user", "ann"]);
    assert!(!dir_a.path().join("keys.db").exists(), "keys are not kept in the data dir");
    let (a, b) = (Server::start_in(dir_a.path(), &env), Server::start_in(dir_b.path(), &env));
    let (http_a, http_b) = (Http::new(&a), Http::new(&b));
    let bearer = |k: &str| format!("Bearer {k}");

    let (status, _) = http_b.get("/v1/stats").await;
    assert_eq!(status, 401, "a key exists, so B requires one too");
    let (status, stats) = http_b.get_with("/v1/stats", &[("Authorization", &bearer(&user))]).await;
    assert_eq!(status, 200, "B knows a key made for the database: {stats}");

    let (_, listed) = http_a.get_with("/v1/keys", &[("Authorization", &bearer(&admin))]).await;
    let user_id = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["role"] == "user")
        .and_then(|k| k["id"].as_str())
        .expect("the user key is listed")
        .to_string();
    let resp = reqwest::Client::new()
        .delete(http_a.url(&format!("/v1/keys/{user_id}")))
        .header("Authorization", bearer(&admin))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let (status, err) = http_b.get_with("/v1/stats", &[("Authorization", &bearer(&user))]).await;
    assert_eq!((status, err["error"]["code"].clone()), (401, json!("credentials_revoked")), "{err}");
}

/// A PostgreSQL cluster of this test's own (it is stopped and started again), from
/// the binaries `scripts/test.sh` names in `MEMHUB_TEST_PG_BIN`. PostgreSQL refuses
/// to run as root, so as root it runs as `nobody`.
struct Cluster {
    bin: std::path::PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

impl Cluster {
    fn as_pg(&self, tool: &str) -> std::process::Command {
        let root = running_as_root();
        let mut cmd = if root {
            let mut c = std::process::Command::new("setpriv");
            c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"]).arg(self.bin.join(tool));
            c
        } else {
            std::process::Command::new(self.bin.join(tool))
        };
        cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        cmd
    }

    fn init() -> Cluster {
        Cluster::init_from(std::env::var("MEMHUB_TEST_PG_BIN").expect("run scripts/test.sh").into())
    }

    /// A cluster of the PostgreSQL whose binaries are in `bin`.
    fn init_from(bin: std::path::PathBuf) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let cluster = Cluster { bin, dir, port };
        if running_as_root() {
            let ok = std::process::Command::new("chown").args(["nobody:nogroup"]).arg(cluster.dir.path()).status();
            assert!(ok.unwrap().success());
        }
        let data = cluster.dir.path().join("data");
        let ok = cluster.as_pg("initdb").arg("-D").arg(&data).args(["-U", "memhub", "--auth=trust"]).status();
        assert!(ok.unwrap().success(), "initdb");
        cluster.start();
        cluster
    }

    /// A cluster that accepts TLS connections only, with a server certificate for
    /// 127.0.0.1 signed by a CA of this test's own; returns the CA's certificate file.
    /// It runs Debian's PostgreSQL 15 (`MEMHUB_TEST_PG15_BIN`): the PyPI build the
    /// other tests run has no TLS, and this one has no pgvector either.
    fn init_tls() -> (Cluster, std::path::PathBuf) {
        let bin = std::env::var("MEMHUB_TEST_PG15_BIN").expect("MEMHUB_TEST_PG15_BIN: run scripts/test.sh");
        let cluster = Cluster::init_from(bin.into());
        cluster.stop();
        let data = cluster.dir.path().join("data");
        let certs = cluster.dir.path().join("certs");
        std::fs::create_dir(&certs).unwrap();
        let openssl = |args: &[&str]| {
            let out = std::process::Command::new("openssl").args(args).current_dir(&certs).output();
            let out = out.expect("openssl (scripts/test.sh installs it)");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        openssl(
            &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2"]
                .iter()
                .copied()
                .chain(["-subj", "/CN=memhub test CA"])
                .collect::<Vec<_>>(),
        );
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        std::fs::write(certs.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ]);
        for file in ["server.crt", "server.key"] {
            std::fs::copy(certs.join(file), data.join(file)).unwrap();
        }
        // TLS or nothing: plain connections over TCP are rejected.
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 0.0.0.0/0 reject\n",
        )
        .unwrap();
        if running_as_root() {
            let ok = std::process::Command::new("chown").args(["-R", "nobody:nogroup"]).arg(&data).status();
            assert!(ok.unwrap().success());
        }
        let key = data.join("server.key");
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        std::fs::write(data.join("postgresql.auto.conf"), "ssl = on\n").unwrap();
        if running_as_root() {
            let ok = std::process::Command::new("chown")
                .args(["nobody:nogroup"])
                .arg(data.join("postgresql.auto.conf"))
                .status();
            assert!(ok.unwrap().success());
        }
        cluster.start();
        (cluster, certs.join("ca.crt"))
    }

    fn start(&self) {
        let options = format!("-p {} -k {} -c listen_addresses=127.0.0.1", self.port, self.dir.path().display());
        let ok = self
            .as_pg("pg_ctl")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-w", "-o", &options, "start"])
            .status();
        assert!(ok.unwrap().success(), "pg_ctl start");
    }

    fn stop(&self) {
        let ok =
            self.as_pg("pg_ctl").arg("-D").arg(self.dir.path().join("data")).args(["-m", "immediate", "stop"]).status();
        assert!(ok.unwrap().success(), "pg_ctl stop");
    }

    fn url(&self) -> String {
        format!("postgres://memhub@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ =
            self.as_pg("pg_ctl").arg("-D").arg(self.dir.path().join("data")).args(["-m", "immediate", "stop"]).status();
    }
}

fn running_as_root() -> bool {
    std::process::Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// The database goes away: requests are refused with 503 `storage_unavailable`
/// within the pool timeout (no hang, no crash); it comes back: the same server
/// process serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_answers_503_while_its_database_is_down_and_resumes_when_it_is_back() {
    let cluster = Cluster::init();
    let url = cluster.url();
    let env = [("MEMHUB_STORAGE_BACKEND", "postgres"), ("MEMHUB_POSTGRES_URL", url.as_str())];
    let dir = tempfile::tempdir().unwrap();
    let mut config = std::fs::File::create(dir.path().join("memhub.toml")).unwrap();
    std::io::Write::write_all(&mut config, b"[storage.postgres]\nacquire_timeout_seconds = 1\n").unwrap();
    let config_path = dir.path().join("memhub.toml");
    let data = dir.path().join("data");
    let server = Server::start_in(&data, &[env[0], env[1], ("MEMHUB_CONFIG", config_path.to_str().unwrap())]);
    let http = Http::new(&server);
    let (status, _) = http.post("/v1/memories", &note("before", "written before the outage")).await;
    assert_eq!(status, 201);

    cluster.stop();
    let started = std::time::Instant::now();
    let (status, err) = http.post("/v1/memories", &note("during", "written during the outage")).await;
    assert_eq!((status, err["error"]["code"].clone()), (503, json!("storage_unavailable")), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(15), "bounded by the pool timeout");
    let (status, health) = http.get("/health").await;
    assert_eq!((status, health["ready"].clone()), (503, json!(false)), "{health}");

    cluster.start();
    eventually("the server writes again", || async {
        http.post("/v1/memories", &note("after", "written after the outage")).await.0 == 201
    })
    .await;
    let (status, found) = http.post("/v1/search", &json!({"query": "outage", "semantic_ratio": 0.0})).await;
    assert_eq!(status, 200, "{found}");
    let keys: Vec<&str> = found["results"].as_array().unwrap().iter().filter_map(|h| h["memory_id"].as_str()).collect();
    assert!(keys.contains(&"before") && keys.contains(&"after") && !keys.contains(&"during"), "{found}");
}

/// The pull worker runs on the leader, and its ledger is in the database: when the
/// leader is killed, the replica that takes over does not ingest what it ingested,
/// and ingests what comes next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pull_worker_moves_to_the_next_leader_without_ingesting_an_upload_twice() {
    let url = fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let bucket = dir.path().join("bucket");
    std::fs::create_dir_all(&bucket).unwrap();
    let config = dir.path().join("memhub.toml");
    std::fs::write(
        &config,
        format!("[ingest]\ninterval_seconds = 1\n[ingest.bucket]\nurl = \"file://{}\"\n", bucket.display()),
    )
    .unwrap();
    let env = [
        ("MEMHUB_STORAGE_BACKEND", "postgres"),
        ("MEMHUB_POSTGRES_URL", url.as_str()),
        ("MEMHUB_CONFIG", config.to_str().unwrap()),
    ];
    let mut a = Server::start_in(&dir.path().join("a"), &env);
    let http_a = Http::new(&a);
    eventually("A leads", || leader(&http_a)).await;
    let b = Server::start_in(&dir.path().join("b"), &env);
    let http_b = Http::new(&b);

    let first: Vec<Value> =
        (0..3).map(|i| common::conversation(&format!("a{i}"), &format!("heron survey {i}"))).collect();
    common::akosha_upload(&bucket, "mac.local", "u1", &first, Some("gzip"));
    let done = |status: &Value, key: &str| -> Option<Value> {
        status["uploads"]
            .as_array()?
            .iter()
            .find(|u| u["key"].as_str().is_some_and(|k| k.contains(key)) && u["state"] == "done")
            .cloned()
    };
    eventually("A ingests the first upload", || async {
        done(&http_a.get("/v1/ingest/status").await.1, "u1").is_some()
    })
    .await;
    let (_, status) = http_b.get("/v1/ingest/status").await;
    assert!(status["last_poll_at"].is_null(), "B does not poll while A leads: {status}");
    let ingested = done(&status, "u1").expect("B reads the same ledger");

    a.kill9();
    eventually("B takes over and polls", || async {
        !http_b.get("/v1/ingest/status").await.1["last_poll_at"].is_null()
    })
    .await;
    let second: Vec<Value> =
        (0..2).map(|i| common::conversation(&format!("b{i}"), &format!("egret count {i}"))).collect();
    common::akosha_upload(&bucket, "mac.local", "u2", &second, Some("gzip"));
    eventually("B ingests the next upload", || async {
        done(&http_b.get("/v1/ingest/status").await.1, "u2").is_some()
    })
    .await;
    let (_, status) = http_b.get("/v1/ingest/status").await;
    assert_eq!(done(&status, "u1"), Some(ingested), "the first upload was not ingested again: {status}");
    let (_, found) =
        http_b.post("/v1/search", &json!({"query": "heron survey", "semantic_ratio": 0.0, "limit": 10})).await;
    assert_eq!(found["results"].as_array().unwrap().len(), 3, "{found}");
}

/// A database that cannot be reached at start is a clear error, not a panic; a
/// server over PostgreSQL stops cleanly on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_at_start_is_an_error_and_sigterm_stops_cleanly() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::memhub_bin())
        .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("MEMHUB_STORAGE_BACKEND", "postgres")
        .env("MEMHUB_POSTGRES_URL", format!("postgres://memhub:hunter2@127.0.0.1:{closed}/memhub"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot open") && !stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "the password is not logged: {stderr}");

    let url = fresh_database();
    let mut server =
        Server::start_in(dir.path(), &[("MEMHUB_STORAGE_BACKEND", "postgres"), ("MEMHUB_POSTGRES_URL", &url)]);
    let (status, _) = Http::new(&server).post("/v1/memories", &note("k", "stored before a clean stop")).await;
    assert_eq!(status, 201);
    assert_eq!(server.terminate(), Some(0), "SIGTERM: a clean exit");
}

/// `/metrics` of `http` read with the scrape token: the value of `series` (0 if absent).
async fn metric(http: &Http, token: &str, series: &str) -> f64 {
    let text =
        reqwest::Client::new().get(http.url("/metrics")).bearer_auth(token).send().await.unwrap().text().await.unwrap();
    common::metric_sample(&text, series).unwrap_or(0.0)
}

/// With Redis (`scripts/test.sh` runs one), replicas count one rate limit and one
/// lockout, and share query vectors: a key's requests spread over A and B get the
/// key's rate, not twice it; a text query embedded through A is not embedded again
/// through B; an address that keeps failing to authenticate through A is refused
/// by B too, even with a good key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_rate_limits_query_vectors_and_the_lockout_through_redis() {
    let redis = std::env::var("MEMHUB_TEST_REDIS_URL").expect("MEMHUB_TEST_REDIS_URL: run scripts/test.sh");
    let model = std::env::var("MEMHUB_TEST_MODEL_DIR").expect("MEMHUB_TEST_MODEL_DIR: run scripts/test.sh");
    let url = fresh_database();
    let token = "scrape-token-of-this-test";
    let env = [
        ("MEMHUB_STORAGE_BACKEND", "postgres"),
        ("MEMHUB_POSTGRES_URL", url.as_str()),
        ("MEMHUB_REDIS_URL", redis.as_str()),
        ("MEMHUB_MODEL_DIR", model.as_str()),
        ("MEMHUB_METRICS_TOKEN", token),
        // 2 per second, bursts of 4 (twice the rate).
        ("MEMHUB_RATE_PER_SECOND", "2"),
        ("MEMHUB_AUTH_FAILURES_PER_MINUTE", "3"),
    ];
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let key = create_key_in(dir_a.path(), &env, &["--role", "admin", "--tenant", "default"]);
    let (a, b) = (Server::start_in(dir_a.path(), &env), Server::start_in(dir_b.path(), &env));
    let (http_a, http_b) = (Http::new(&a), Http::new(&b));
    let auth = format!("Bearer {key}");
    let headers = [("Authorization", auth.as_str())];

    // Query vectors: embedded once, through A; B finds A's.
    let query = json!({"query": "where does the heron nest"});
    let search = |http: &Http| {
        let req = reqwest::Client::new().post(http.url("/v1/search")).header("Authorization", &auth).json(&query);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(search(&http_a).await, 200);
    assert_eq!(search(&http_b).await, 200);
    let series = |found: &str| format!("memhub_query_vectors_total{{found=\"{found}\"}}");
    assert_eq!(metric(&http_a, token, &series("embedded")).await, 1.0);
    assert_eq!(metric(&http_b, token, &series("shared")).await, 1.0, "B took A's vector from Redis");
    assert_eq!(metric(&http_b, token, &series("embedded")).await, 0.0, "B embedded nothing");
    // The searches spent tokens of the key's bucket: wait until it is full again.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;

    // One bucket for the key across both replicas.
    let started = std::time::Instant::now();
    let mut allowed = 0;
    for i in 0..20 {
        let http = if i % 2 == 0 { &http_a } else { &http_b };
        let (status, _) = http.get_with("/v1/stats", &headers).await;
        assert!(status == 200 || status == 429, "{status}");
        allowed += usize::from(status == 200);
    }
    let refill = (started.elapsed().as_secs_f64() * 2.0).ceil() as usize;
    assert!(
        allowed >= 4 && allowed <= 4 + refill,
        "{allowed} allowed: one bucket (burst 4 + {refill} refilled), not two"
    );

    // The lockout: three failures through A, the fourth (through B) blocks the address everywhere.
    for _ in 0..3 {
        let (status, _) = http_a.get_with("/v1/stats", &[("Authorization", "Bearer mh_notakey_000000000000")]).await;
        assert_eq!(status, 401);
    }
    let (status, _) = http_b.get_with("/v1/stats", &[("Authorization", "Bearer mh_notakey_000000000000")]).await;
    assert_eq!(status, 429, "B counted A's failures");
    tokio::time::sleep(std::time::Duration::from_millis(600)).await; // the rate bucket refills
    let (status, err) = http_a.get_with("/v1/stats", &headers).await;
    assert_eq!(status, 429, "the address is blocked on A too, good key or not: {err}");
}

/// `sslmode` in the URL: against a database that accepts TLS only, a server asking
/// for `verify-full` with the database's CA connects and serves; one with another CA
/// is refused (an impostor's certificate), and so is one without TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_database_is_verified_as_the_url_asks() {
    let (cluster, ca) = Cluster::init_tls();
    let base = cluster.url();
    let start = |url: String| {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(common::memhub_bin())
            .args(["keys", "list", "--data-dir"])
            .arg(dir.path())
            .env("MEMHUB_STORAGE_BACKEND", "postgres")
            .env("MEMHUB_POSTGRES_URL", url)
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (ok, err) = start(format!("{base}?sslmode=disable"));
    assert!(!ok, "a plain connection is rejected by this database");
    assert!(err.contains("cannot open") && !err.contains("panicked"), "{err}");

    let elsewhere = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "k.pem", "-out", "ca.crt", "-days", "2"])
        .args(["-subj", "/CN=someone else"])
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let other_ca = elsewhere.path().join("ca.crt");
    let (ok, err) = start(format!("{base}?sslmode=verify-full&sslrootcert={}", other_ca.display()));
    assert!(!ok, "a certificate from another CA is refused");
    assert!(err.contains("cannot open"), "{err}");

    let url = format!("{base}?sslmode=verify-full&sslrootcert={}", ca.display());
    let (ok, err) = start(url.clone());
    assert!(ok, "verified TLS connects: {err}");
    let dir = tempfile::tempdir().unwrap();
    let server =
        Server::start_in(dir.path(), &[("MEMHUB_STORAGE_BACKEND", "postgres"), ("MEMHUB_POSTGRES_URL", url.as_str())]);
    let http = Http::new(&server);
    let (status, out) = http.post("/v1/memories", &note("tls", "written over a verified TLS connection")).await;
    assert_eq!(status, 201, "{out}");
    let (status, found) = http.post("/v1/search", &json!({"query": "verified TLS", "semantic_ratio": 0.0})).await;
    assert_eq!((status, found["results"][0]["memory_id"].clone()), (200, json!("tls")), "{found}");

    // A database without pgvector keeps vectors as real[] (the other tests' has it).
    use memhub_postgres::sqlx::{self, Connection};
    let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
    let column: String = sqlx::query_scalar(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
         WHERE attrelid = 'memories'::regclass AND attname = 'embedding'",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert_eq!(column, "real[]");
}

/// `memhub export` of the store that `env` names, as sorted lines.
fn exported(data_dir: &std::path::Path, env: &[(&str, &str)]) -> Vec<String> {
    let out = std::process::Command::new(common::memhub_bin())
        .args(["export", "--data-dir"])
        .arg(data_dir)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(out.status.success(), "export: {}", String::from_utf8_lossy(&out.stderr));
    let mut lines: Vec<String> = String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

/// `memhub migrate` copies an embedded store into PostgreSQL: both export the same
/// memories (ids, versions, times, vectors), the history and schemas come along, a
/// key made on the embedded store works on a server over the database, and the
/// audit chain verifies there with the source's head. Run again, it copies nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memhub_migrate_copies_an_embedded_store_into_postgresql() {
    let source = tempfile::tempdir().unwrap();
    let key = common::create_key(source.path(), &["--role", "admin", "--tenant", "default"]);
    {
        let mut server = Server::start_in(source.path(), &[("MEMHUB_STORAGE_BACKEND", "sqlite")]);
        let http = Http::new(&server);
        let auth = format!("Bearer {key}");
        let headers = [("Authorization", auth.as_str())];
        let client = reqwest::Client::new();
        let post =
            |path: &str, body: Value| client.post(http.url(path)).header("Authorization", &auth).json(&body).send();
        for i in 0..1200 {
            let mut m = note(&format!("m{i}"), &format!("memory number {i} about herons"));
            m["embedding"] = json!(axis_vector(i % 384));
            assert_eq!(post("/v1/memories", m).await.unwrap().status().as_u16(), 201);
        }
        // Two more versions of one memory.
        for v in ["second thoughts on herons", "third thoughts on herons"] {
            assert_eq!(post("/v1/memories", note("m7", v)).await.unwrap().status().as_u16(), 200, "updated");
        }
        let schema =
            json!({"kind": "standup", "schema": {"type": "object", "properties": {"team": {"type": "string"}}}});
        let status = post("/v1/schemas", schema).await.unwrap().status().as_u16();
        assert!(status == 200 || status == 201, "{status}");
        let policy = json!({"policies": [{"kind": "note", "ttl_seconds": 315_360_000}]});
        let resp = client.put(http.url("/v1/retention")).header("Authorization", &auth).json(&policy).send().await;
        assert_eq!(resp.unwrap().status().as_u16(), 200);
        let (status, _) = http.get_with("/v1/stats", &headers).await;
        assert_eq!(status, 200);
        // Stopped as an operator would before migrating: everything audited is written.
        assert_eq!(server.terminate(), Some(0));
    }
    let url = fresh_database();
    let migrate = || {
        std::process::Command::new(common::memhub_bin())
            .args(["migrate", "--data-dir"])
            .arg(source.path())
            .args(["--to", &url])
            .env("MEMHUB_STORAGE_BACKEND", "sqlite")
            .output()
            .unwrap()
    };
    let out = migrate();
    assert!(out.status.success(), "migrate: {}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["memories"]["copied"], 1200, "{report}");
    assert_eq!(report["memories"]["superseded_versions"], 2, "{report}");
    assert_eq!(report["keys"]["copied"], 1, "{report}");
    assert!(report["audit_records"].as_u64().unwrap() > 1200, "{report}");
    assert!(!report.to_string().contains("secret"), "{report}");

    let again = migrate();
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let report: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(
        (report["memories"]["copied"].clone(), report["memories"]["already_there"].clone()),
        (json!(0), json!(1200))
    );
    assert_eq!((report["keys"]["copied"].clone(), report["audit_records"].clone()), (json!(0), json!(0)), "{report}");

    let pg = [("MEMHUB_STORAGE_BACKEND", "postgres"), ("MEMHUB_POSTGRES_URL", url.as_str())];
    let replica = tempfile::tempdir().unwrap();
    let before = exported(source.path(), &[("MEMHUB_STORAGE_BACKEND", "sqlite")]);
    assert_eq!(before.len(), 1200);
    assert_eq!(before, exported(replica.path(), &pg), "the same memories: ids, versions, times, vectors");
    let m7 = before.iter().map(|l| serde_json::from_str::<Value>(l).unwrap()).find(|m| m["memory_id"] == "m7").unwrap();
    assert_eq!(m7["version"], 3, "{m7}");

    let audit = |dir: &std::path::Path, env: &[(&str, &str)]| -> Value {
        let out = std::process::Command::new(common::memhub_bin())
            .args(["audit", "--data-dir"])
            .arg(dir)
            .arg("verify")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let (before, after) = (audit(source.path(), &[("MEMHUB_STORAGE_BACKEND", "sqlite")]), audit(replica.path(), &pg));
    assert_eq!((after["head"].clone(), after["records"].clone()), (before["head"].clone(), before["records"].clone()));

    let server = Server::start_in(replica.path(), &pg);
    let http = Http::new(&server);
    let auth = format!("Bearer {key}");
    let path = format!("/v1/memories/{}/history", m7["id"].as_str().unwrap());
    let (status, history) = http.get_with(&path, &[("Authorization", &auth)]).await;
    assert_eq!(status, 200, "{history}");
    let text = history.to_string();
    assert!(text.contains("memory number 7 about herons") && text.contains("second thoughts"), "{history}");
    let (status, found) = http.get_with("/v1/schemas", &[("Authorization", &auth)]).await;
    assert_eq!(status, 200, "the embedded store's key works over the database: {found}");
    assert!(found.to_string().contains("standup"), "{found}");
    let (_, retention) = http.get_with("/v1/retention", &[("Authorization", &auth)]).await;
    assert!(retention.to_string().contains("315360000"), "{retention}");
}
