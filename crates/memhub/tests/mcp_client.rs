//! A real MCP client (the official Python SDK) drives every tool over streamable
//! HTTP and over stdio. `scripts/test.sh` installs the SDK into `.venv`; set
//! `MEMHUB_TEST_PYTHON` to use another interpreter.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{create_key, manifest_dir, memhub_bin, model_dir, Server};

fn python() -> PathBuf {
    if let Ok(p) = std::env::var("MEMHUB_TEST_PYTHON") {
        return p.into();
    }
    let venv = manifest_dir().join("../../.venv/bin/python");
    assert!(
        venv.exists(),
        "the Python MCP SDK is needed for this test: run scripts/test.sh (it creates .venv with `mcp`), \
         or set MEMHUB_TEST_PYTHON to a python that has the `mcp` package"
    );
    venv
}

fn run_client(args: &[&str]) {
    let script = manifest_dir().join("tests/mcp_client.py");
    let out = Command::new(python()).arg(script).args(args).output().expect("run the Python MCP client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "MCP client failed ({args:?}):\n{stdout}\n{stderr}");
    assert!(stdout.contains("all tools ok"), "{stdout}");
}

#[test]
fn python_sdk_over_streamable_http_with_the_local_encoder() {
    let model = model_dir();
    let server = Server::start_with_env(&[("MEMHUB_MODEL_DIR", model.to_str().unwrap())]);
    run_client(&["http", &server.url("/mcp"), "--encoder"]);
}

#[test]
fn python_sdk_over_stdio() {
    let dir = tempfile::tempdir().unwrap();
    run_client(&["stdio", memhub_bin(), dir.path().to_str().unwrap()]);
}

#[tokio::test]
async fn python_sdk_session_with_a_user_key_is_scoped_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let admin = create_key(dir.path(), &["--role", "admin", "--tenant", "acme"]);
    let ann = create_key(dir.path(), &["--role", "user", "--tenant", "acme", "--user", "ann"]);
    let server = Server::start_in(dir.path(), &[]);
    let bob: serde_json::Value = reqwest::Client::new()
        .post(server.url("/v1/memories"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"content": "bob's otters", "user_id": "bob"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bob_id = bob["memory"]["id"].as_str().unwrap().to_string();
    let url = server.url("/mcp");
    tokio::task::spawn_blocking(move || run_scoped(&url, &ann, &bob_id)).await.unwrap();

    // The session's tool calls are in the audit log under ann's key.
    // Reading the audit log over HTTP also flushes its writer.
    let status = reqwest::Client::new().get(server.url("/v1/audit")).bearer_auth(&admin).send().await.unwrap().status();
    assert_eq!(status, 200);
    let conn = memhub_govern::audit::open_read_only(&dir.path().join("audit.db")).unwrap();
    let q =
        memhub_govern::AuditQuery { action: Some("mcp.store_memory".into()), limit: Some(100), ..Default::default() };
    let records = memhub_govern::audit::query(&conn, &q).unwrap();
    let outcomes: Vec<(String, u16)> = records.iter().map(|r| (r.event.actor.clone(), r.event.status)).collect();
    assert_eq!(outcomes.len(), 2, "{outcomes:?}");
    assert!(outcomes.iter().all(|(actor, _)| actor.starts_with("key:mh_")), "{outcomes:?}");
    assert!(outcomes.iter().any(|(_, s)| *s == 403) && outcomes.iter().any(|(_, s)| *s == 200), "{outcomes:?}");
}

fn run_scoped(url: &str, key: &str, foreign: &str) {
    let script = manifest_dir().join("tests/mcp_client.py");
    let out = Command::new(python()).arg(script).args(["http-scoped", url, key, foreign]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "scoped MCP client failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("refused without credentials"), "{stdout}");
}
