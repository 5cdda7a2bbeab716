//! The OpenAPI document at `/openapi.json` says what the API accepts: schemathesis
//! (PyPI, installed by scripts/test.sh into .venv/schemathesis) generates requests
//! from it, valid and invalid, and checks that none gets a 5xx, every response
//! conforms to the document, and the requests the document allows are accepted.
//! (Not checked: that everything the document forbids is refused. The server is
//! more lenient than its document in places, e.g. times without a zone offset.)

mod common;

use std::process::Command;

use common::{manifest_dir, Server};

#[test]
fn the_api_accepts_what_its_document_allows_and_answers_as_documented() {
    let schemathesis = manifest_dir().join("../../.venv/schemathesis/bin/schemathesis");
    assert!(
        schemathesis.exists(),
        "{} is missing: run scripts/test.sh, which installs schemathesis",
        schemathesis.display()
    );
    let server = Server::start();
    let report = tempfile::tempdir().unwrap();
    let out = Command::new(&schemathesis)
        .arg("run")
        .arg(server.url("/openapi.json"))
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,\
             positive_data_acceptance",
            "--phases",
            "examples,coverage,fuzzing",
            // Bounded: a fixed seed and few examples per operation keep the run short and repeatable.
            "--max-examples",
            "25",
            "--seed",
            "20261202",
            // One worker: hypothesis' lambda descriptions are not thread-safe.
            "--workers",
            "1",
            "--no-shrink",
            // The change feed answers with a stream that stays open (tests/events.rs covers it).
            "--exclude-path",
            "/v1/events",
            "--suppress-health-check",
            "all",
        ])
        .current_dir(report.path())
        .output()
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "schemathesis found problems:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
}
