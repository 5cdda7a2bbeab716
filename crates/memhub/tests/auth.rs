//! Authentication as an attacker tries it: no credentials, forged, expired, revoked,
//! `alg: none` and wrong-key tokens, brute force, floods, foreign origins on /mcp;
//! plus the audit chain's tamper check, retention and erasure over HTTP.

mod common;

use std::process::Command;

use common::{create_key, memhub_bin, Server};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const SECRET: &str = "test-secret-of-at-least-thirty-two-bytes!";

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn jwt(claims: &Value, secret: &[u8]) -> String {
    encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret)).unwrap()
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    fn new(server: &Server) -> Api {
        Api { http: reqwest::Client::new(), base: server.base.clone() }
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut req =
            self.http.request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)), headers)
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let (s, v, _) = self.send("GET", path, token, None, &[]).await;
        (s, v)
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        let (s, v, _) = self.send("POST", path, token, Some(body), &[]).await;
        (s, v)
    }
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test]
async fn bad_credentials_get_401_with_a_code_and_brute_force_gets_429() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let admin = create_key(dir, &["--role", "admin", "--tenant", "acme"]);
    let revoked = create_key(dir, &["--role", "user", "--tenant", "acme", "--user", "ann"]);
    let short = create_key(dir, &["--role", "user", "--tenant", "acme", "--user", "ann", "--expires", "1s"]);
    let out = Command::new(memhub_bin())
        .args(["keys", "revoke", "--data-dir"])
        .arg(dir)
        .arg(&revoked[..15])
        .output()
        .unwrap();
    assert!(out.status.success());
    let server = Server::start_in(dir, &[("MEMHUB_JWT_SECRET", SECRET), ("MEMHUB_AUTH_FAILURES_PER_MINUTE", "12")]);
    let api = Api::new(&server);

    assert_eq!(api.get("/health", None).await.0, 200, "health needs no credentials");
    let (s, v, headers) = api.send("GET", "/v1/stats", None, None, &[]).await;
    assert_eq!((s, code(&v)), (401, "missing_credentials"));
    assert!(headers.get("www-authenticate").is_some());
    let (s, v) = api.get("/v1/stats", Some(&admin)).await;
    assert_eq!(s, 200, "{v}");

    let mut forged = admin.clone();
    forged.replace_range(20..24, "AAAA");
    let claims = || json!({"sub": "ann", "tenant": "acme", "role": "user", "exp": now() + 600});
    let mut expired = claims();
    expired["exp"] = json!(now() - 3600);
    let mut no_tenant = claims();
    no_tenant.as_object_mut().unwrap().remove("tenant");
    let b64 = |v: &Value| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let alg_none = format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&claims()));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let cases: Vec<(&str, String, &str)> = vec![
        ("forged key", forged, "invalid_credentials"),
        ("revoked key", revoked.clone(), "credentials_revoked"),
        ("expired key", short, "credentials_expired"),
        ("expired token", jwt(&expired, SECRET.as_bytes()), "credentials_expired"),
        ("alg none", alg_none, "token_algorithm_rejected"),
        ("wrong secret", jwt(&claims(), b"another-secret-of-thirty-two-bytes!!"), "invalid_credentials"),
        ("missing claim", jwt(&no_tenant, SECRET.as_bytes()), "token_claims_invalid"),
        ("garbage", "x".repeat(5000), "invalid_credentials"),
    ];
    for (what, token, expected) in &cases {
        let (s, v) = api.get("/v1/stats", Some(token)).await;
        assert_eq!((s, code(&v)), (401, *expected), "{what}: {v}");
    }
    // A good token works and is scoped to its user.
    let (s, v) =
        api.post("/v1/memories", Some(&jwt(&claims(), SECRET.as_bytes())), json!({"content": "ann's own"})).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["memory"]["user_id"], "ann");
    assert_eq!(v["memory"]["tenant"], "acme");

    // Brute force: after 12 failures a minute from this address, 429 with Retry-After,
    // even for a correct key (the guesser cannot tell).
    let mut limited = None;
    for i in 0..20 {
        let (s, v, headers) =
            api.send("GET", "/v1/stats", Some(&format!("mh_00000000000{}_guess{i}", i % 10)), None, &[]).await;
        if s == 429 {
            limited = Some((i, code(&v).to_string(), headers.get("retry-after").cloned()));
            break;
        }
        assert_eq!(s, 401);
    }
    let (at, c, retry) = limited.expect("brute force was never limited");
    assert!(at <= 12 - cases.len() + 1, "limited after {at} more failures");
    assert_eq!(c, "rate_limited");
    assert!(retry.unwrap().to_str().unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(api.get("/v1/stats", Some(&admin)).await.0, 429, "blocked for a while");

    // Every failure is in the audit log, attributed to the key id when there is one.
    let records = {
        let conn = memhub_govern::audit::open_read_only(&dir.join("audit.db")).unwrap();
        // The writer commits within milliseconds; give it a moment.
        std::thread::sleep(std::time::Duration::from_millis(300));
        memhub_govern::audit::query(
            &conn,
            &memhub_govern::AuditQuery { action: Some("auth.failed".into()), limit: Some(1000), ..Default::default() },
        )
        .unwrap()
    };
    assert!(records.len() >= cases.len() + 2, "{} failures recorded", records.len());
    assert!(records.iter().any(|r| r.event.actor == format!("key:{}", &revoked[..15]) && r.event.status == 401));
    assert!(records.iter().any(|r| r.event.status == 429 && r.event.outcome == memhub_govern::Outcome::Denied));
    let text = serde_json::to_string(&records).unwrap();
    assert!(!text.contains(&revoked[16..]), "no secret in the audit log");
}

#[tokio::test]
async fn floods_are_limited_per_principal() {
    let tmp = tempfile::tempdir().unwrap();
    let a = create_key(tmp.path(), &["--role", "admin", "--tenant", "acme"]);
    let b = create_key(tmp.path(), &["--role", "admin", "--tenant", "acme"]);
    let server = Server::start_in(tmp.path(), &[("MEMHUB_RATE_PER_SECOND", "5")]);
    let api = Api::new(&server);
    let mut statuses = Vec::new();
    for _ in 0..30 {
        let (s, _, headers) = api.send("GET", "/v1/stats", Some(&a), None, &[]).await;
        if s == 429 {
            assert!(headers.get("retry-after").is_some());
        }
        statuses.push(s);
    }
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert!(limited >= 10, "{statuses:?}");
    assert!(statuses[..10].iter().all(|s| *s == 200), "the burst (2 x rate) passes: {statuses:?}");
    assert_eq!(api.get("/v1/stats", Some(&b)).await.0, 200, "another key has its own bucket");
}

/// Open mode serves one machine: its local clients (all on 127.0.0.1) do not share
/// one bucket, while keys on the same server keep theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_mode_does_not_limit_local_clients_as_one() {
    let server = Server::start_with_env(&[("MEMHUB_RATE_PER_SECOND", "5")]);
    let clients: Vec<_> = (0..64)
        .map(|_| {
            let http = common::Http::new(&server);
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for _ in 0..4 {
                    statuses.push(http.get("/v1/stats").await.0);
                }
                statuses
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for c in clients {
        statuses.extend(c.await.unwrap());
    }
    assert_eq!(statuses.len(), 256);
    assert!(statuses.iter().all(|s| *s == 200), "{} of 256 refused", statuses.iter().filter(|s| **s != 200).count());
}

#[tokio::test]
async fn mcp_refuses_foreign_origins() {
    let server = Server::start();
    let api = Api::new(&server);
    let body = json!({"method": "tools/call", "params": {"name": "list_memories", "arguments": {}}});
    let (s, v, _) = api.send("POST", "/mcp", None, Some(body.clone()), &[("origin", "https://evil.example")]).await;
    assert_eq!((s, code(&v)), (403, "forbidden"), "{v}");
    let local = format!("http://localhost:{}", server.port);
    let (s, _, _) = api.send("POST", "/mcp", None, Some(body.clone()), &[("origin", &local)]).await;
    assert_eq!(s, 200);
    let (s, _, _) = api.send("POST", "/mcp", None, Some(body), &[]).await;
    assert_eq!(s, 200, "clients that send no Origin are not browsers");
}

#[tokio::test]
async fn audit_verify_finds_a_tampered_record() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut server = Server::start_in(dir, &[]);
    let api = Api::new(&server);
    for i in 0..5 {
        assert_eq!(api.post("/v1/memories", None, json!({"content": format!("memory {i}")})).await.0, 201);
    }
    assert_eq!(server.terminate(), Some(0));
    let verify = || Command::new(memhub_bin()).args(["audit", "verify", "--data-dir"]).arg(dir).output().unwrap();
    let out = verify();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["records"], 5);
    let tail = Command::new(memhub_bin()).args(["audit", "tail", "-n", "2", "--data-dir"]).arg(dir).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&tail.stdout).lines().count(), 2);

    // Rewrite record 3's outcome, as someone covering their tracks would.
    let tamper = Command::new("python3")
        .args(["-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(\"UPDATE audit_log SET outcome='denied' WHERE seq=3\"); c.commit()"])
        .arg(dir.join("audit.db"))
        .status()
        .unwrap();
    assert!(tamper.success());
    let out = verify();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("broken at record 3"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn retention_and_erasure_over_http() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let admin = create_key(dir, &["--role", "admin", "--tenant", "acme"]);
    let server = Server::start_in(dir, &[("MEMHUB_PURGE_INTERVAL_SECONDS", "1")]);
    let api = Api::new(&server);
    let t = Some(admin.as_str());
    for (i, kind) in ["note", "note", "context"].iter().enumerate() {
        let body = json!({"memory_id": format!("r{i}"), "kind": kind, "content": format!("retentionmarker {i}")});
        assert_eq!(api.post("/v1/memories", t, body).await.0, 201);
    }
    let found = |v: &Value| v["results"].as_array().map_or(0, Vec::len);
    let (_, v) = api.post("/v1/search", t, json!({"query": "retentionmarker"})).await;
    assert_eq!(found(&v), 3);
    let (s, v, _) = api
        .send("PUT", "/v1/retention", t, Some(json!({"policies": [{"kind": "note", "ttl_seconds": "1s"}]})), &[])
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["policies"][0]["tenant"], "acme");
    let (s, v, _) = api
        .send("PUT", "/v1/retention", t, Some(json!({"policies": [{"kind": "note", "ttl_seconds": "soon"}]})), &[])
        .await;
    assert_eq!((s, code(&v)), (400, "invalid_field"), "{v}");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let (_, v) = api.post("/v1/search", t, json!({"query": "retentionmarker"})).await;
    assert_eq!(found(&v), 1, "notes past their ttl are gone at once: {v}");
    // The purge job removes them from the store: `memhub export` reads the raw store
    // (expired memories included) while the server runs.
    let raw_count = || {
        let out =
            Command::new(memhub_bin()).args(["export", "--tenant", "acme", "--data-dir"]).arg(dir).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).matches("retentionmarker").count()
    };
    let mut stored = raw_count();
    for _ in 0..50 {
        if stored == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        stored = raw_count();
    }
    assert_eq!(stored, 1, "only the context memory is left in the store");
    let (s, _, _) = api.send("PUT", "/v1/retention", t, Some(json!({"policies": []})), &[]).await;
    assert_eq!(s, 200);

    // Erasure: a receipt with counts; the text is gone from every read path.
    for i in 0..3 {
        let body = json!({"memory_id": format!("e{i}"), "user_id": "eve", "content": format!("erasuremarker {i}")});
        assert_eq!(api.post("/v1/memories", t, body).await.0, 201);
    }
    let (s, v) = api.post("/v1/erase", t, json!({})).await;
    assert_eq!((s, code(&v)), (400, "invalid_field"), "erase needs criteria: {v}");
    let (s, receipt) = api.post("/v1/erase", t, json!({"user_id": "eve"})).await;
    assert_eq!(s, 200, "{receipt}");
    assert_eq!((receipt["memories"].as_u64(), receipt["status"].as_str()), (Some(3), Some("erased")));
    assert!(receipt["request_id"].as_str().is_some_and(|r| !r.is_empty()));
    let (_, v) = api.post("/v1/search", t, json!({"query": "erasuremarker"})).await;
    assert_eq!(found(&v), 0);
    let (_, v) = api.get("/v1/memories?user_id=eve", t).await;
    assert_eq!(v["memories"].as_array().unwrap().len(), 0);
    let (_, v) = api.get("/v1/export", t).await;
    assert!(!v.to_string().contains("erasuremarker"));
    let (_, audit) = api.get("/v1/audit?action=erase", t).await;
    assert_eq!(audit["records"][0]["filters"]["user_id"], "eve", "{audit}");
}
