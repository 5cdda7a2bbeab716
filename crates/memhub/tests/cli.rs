//! The command line: export/import round trip, direct search, the data-dir lock,
//! graceful shutdown.

mod common;

use std::process::{Command, Output};

use common::{axis_vector, memhub_bin, Http, Server};
use serde_json::json;

fn memhub(args: &[&str]) -> Output {
    Command::new(memhub_bin()).args(args).env("MEMHUB_LOG", "warn").output().expect("run memhub")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "memhub failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn export_import_round_trip_is_exact_and_search_reads_the_store() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (a.path().to_str().unwrap(), b.path().to_str().unwrap());
    let mut server = Server::start_in(a.path(), &[]);
    let http = Http::new(&server);
    let batch = json!({"memories": [
        {"system_id": "s1", "memory_id": "1", "content": "Ünïcødé memory 日本語", "embedding": axis_vector(1), "tags": ["x"],
         "metadata": {"nested": {"deep": [1, 2.5, null, true]}}, "user_id": "ann", "created_at": "2024-02-29T23:59:59.999999Z"},
        {"system_id": "s1", "memory_id": "2", "kind": "insight", "content": "caching halves latency",
         "attributes": {"category": "perf", "confidence": 0.75, "recommendations": ["add a cache"]}, "expires_at": "2099-01-01T00:00:00Z"},
    ]});
    let (_, out) = http.post("/v1/memories/batch", &batch).await;
    assert_eq!(out["stored"], 2, "{out}");
    // In open mode the caller is a superadmin: it names another tenant in a header.
    let other = json!({"system_id": "s2", "memory_id": "3", "content": "another tenant's memory"});
    let (status, out) = http
        .post_raw(
            "/v1/memories",
            other.to_string(),
            &[("content-type", "application/json"), ("x-memhub-tenant", "other")],
        )
        .await;
    assert_eq!(status, 201, "{out}");
    http.post(
        "/v1/memories",
        &json!({"system_id": "s1", "memory_id": "2", "kind": "insight", "content": "caching halves p99 latency",
        "attributes": {"category": "perf", "confidence": 0.8, "recommendations": []}}),
    )
    .await;

    // Export works while the server runs (read-only), and the server stops cleanly on SIGTERM.
    let live = files.path().join("live.jsonl");
    ok(memhub(&["export", "--data-dir", a_dir, "--out", live.to_str().unwrap()]));
    assert_eq!(server.terminate(), Some(0), "graceful shutdown exits 0");

    let first = files.path().join("a.jsonl");
    ok(memhub(&["export", "--data-dir", a_dir, "--out", first.to_str().unwrap()]));
    let text = std::fs::read_to_string(&first).unwrap();
    assert_eq!(text, std::fs::read_to_string(&live).unwrap());
    assert_eq!(text.lines().count(), 3);

    let report = ok(memhub(&["import", first.to_str().unwrap(), "--data-dir", b_dir]));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&report).unwrap(),
        json!({"created": 3, "updated": 0, "unchanged": 0})
    );
    let second = files.path().join("b.jsonl");
    ok(memhub(&["export", "--data-dir", b_dir, "--out", second.to_str().unwrap()]));
    assert_eq!(text, std::fs::read_to_string(&second).unwrap(), "round trip is byte-exact");
    let again = ok(memhub(&["import", first.to_str().unwrap(), "--data-dir", b_dir]));
    assert!(again.contains("\"unchanged\":3"), "{again}");

    let found = ok(memhub(&["search", "caching latency", "--data-dir", b_dir, "--json"]));
    let found: serde_json::Value = serde_json::from_str(&found).unwrap();
    assert_eq!(found["results"][0]["memory_id"], "2");
    assert_eq!(found["results"][0]["version"], 2);
    let human = ok(memhub(&["search", "tenant", "--data-dir", b_dir, "--tenant", "other"]));
    assert!(human.contains("another tenant's memory"), "{human}");
}

#[test]
fn a_running_server_locks_the_data_dir_against_writers() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("in.jsonl");
    std::fs::write(&file, "").unwrap();
    let _server = Server::start_in(dir.path(), &[]);
    let out = memhub(&["import", file.to_str().unwrap(), "--data-dir", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another memhub process"), "{err}");
}

#[test]
fn import_names_the_bad_line_and_writes_nothing_of_a_bad_batch() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.jsonl");
    std::fs::write(&file, "\n{\"not\": \"a memory\"}\n").unwrap();
    let data = dir.path().join("data");
    let out = memhub(&["import", file.to_str().unwrap(), "--data-dir", data.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2"), "{err}");
    let out = memhub(&["--version"]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("memhub "));
}

#[test]
fn serve_refuses_open_auth_on_a_public_address() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(memhub_bin())
        .args(["serve", "--addr", "0.0.0.0:0", "--data-dir", dir.path().to_str().unwrap()])
        .env("MEMHUB_AUTH", "open")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refusing to listen on 0.0.0.0") && stderr.contains("auth mode open"), "{stderr}");
}

#[tokio::test]
async fn a_public_address_requires_credentials_by_default() {
    // Auto mode on a non-loopback address: the server starts with auth required.
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(memhub_bin());
    cmd.args(["serve", "--addr", "0.0.0.0:0", "--data-dir", dir.path().to_str().unwrap()])
        .env("MEMHUB_LOG", "warn,memhub=info")
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped());
    let server = Server::spawn(cmd, dir.path());
    let (status, body) = Http::new(&server).get("/v1/stats").await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "missing_credentials");
    assert_eq!(Http::new(&server).get("/health").await.0, 200, "health stays open");
}

/// `serve` takes the settings a person reaches for as flags, and a flag beats the
/// environment: `--model-dir` and `--embedder` load the local encoder although
/// `MEMHUB_MODEL_DIR` names an empty directory; `--auth required` closes a loopback
/// server; a bad value is a usage error naming the choices.
#[tokio::test]
async fn serve_flags_set_the_encoder_and_auth_over_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::model_dir();
    let serve = |extra: &[&str]| {
        let mut cmd = Command::new(memhub_bin());
        cmd.args(["serve", "--addr", "127.0.0.1:0", "--data-dir", dir.path().to_str().unwrap()])
            .args(extra)
            .env("MEMHUB_MODEL_DIR", dir.path().join("no-model"))
            .env("MEMHUB_EMBEDDER", "none")
            .env("MEMHUB_LOG", "warn")
            .env("NO_COLOR", "1")
            .stderr(std::process::Stdio::piped());
        cmd
    };
    let flags = ["--model-dir", model.to_str().unwrap(), "--embedder", "minilm", "--log", "warn,memhub=info"];
    let mut server = Server::spawn(serve(&flags), dir.path());
    let http = Http::new(&server);
    let call = json!({"method": "tools/call", "params": {"name": "generate_embedding", "arguments": {"text": "A man is eating food."}}});
    let (status, out) = http.post("/mcp", &call).await;
    assert_eq!((status, out["mode"].as_str(), out["embedding_dim"].as_u64()), (200, Some("real"), Some(384)), "{out}");
    assert_eq!(server.terminate(), Some(0));

    // The flag names a directory without the model: the server says which and stops.
    let missing = dir.path().join("elsewhere");
    let out = serve(&["--model-dir", missing.to_str().unwrap(), "--embedder", "minilm"]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(missing.to_str().unwrap()), "{stderr}");

    let server = Server::spawn(serve(&["--auth", "required", "--log", "warn,memhub=info"]), dir.path());
    let (status, body) = Http::new(&server).get("/v1/stats").await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("missing_credentials")), "{body}");
    drop(server);

    let out = serve(&["--embedder", "bert"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--embedder") && stderr.contains("expected one of `auto`, `minilm`, `openai`, `none`"),
        "{stderr}"
    );
}
