//! A real MCP client (the official Python SDK) drives every tool over streamable
//! HTTP and over stdio. `scripts/test.sh` installs the SDK into `.venv`; set
//! `MEMHUB_TEST_PYTHON` to use another interpreter.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{manifest_dir, memhub_bin, model_dir, Server};

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
