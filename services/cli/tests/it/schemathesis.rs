//! Property-based tests of the REST face: schemathesis reads the
//! `/openapi.json` that a live `tributary up` serves and sends each
//! operation generated requests, valid and invalid, checking every answer.

use std::time::Duration;

use tokio::process::Command;

use crate::support::{Mesh, tool};

/// Requests generated per operation and phase: enough to cover each
/// parameter's edges (the coverage phase adds its own boundary cases), few
/// enough to keep the run near a minute.
const MAX_EXAMPLES: &str = "100";

/// No 5xx, and every answer matches what the document says of it: its
/// status, content type, headers and body. Requests that break the schema
/// (the value ranges included: `limit` above 1000, a group name with a
/// `.`) must be refused, and a verb a path does not take must get 405.
/// Not `positive_data_acceptance`: some refusals cannot be written in a
/// schema (`from` after `to`, an `afterId` that is not a number).
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
response_headers_conformance,response_schema_conformance,negative_data_rejection,\
unsupported_method";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_answer_off_the_schema() {
    let st = tool("TRIBUTARY_SCHEMATHESIS");
    let dir = tempfile::tempdir().unwrap();
    // With the demo workloads running, the reads answer real rows.
    let mesh = Mesh::start_with_workloads(dir.path(), "127.0.0.1:0", &[]).await;
    let report = dir.path().join("schemathesis.xml");
    let run = Command::new(&st)
        .args([
            "run",
            &format!("{}/openapi.json", mesh.url()),
            "--checks",
            CHECKS,
            "--max-examples",
            MAX_EXAMPLES,
            "--phases",
            "examples,coverage,fuzzing,stateful",
            // The `:watch` and `:tail` routes are endless streams by
            // design; their parameters are covered by the gRPC, REST and
            // browser tests.
            "--exclude-path-regex",
            ":(watch|tail)$",
            "--request-timeout",
            "10",
            // One worker: with two threads, hypothesis's shared lambda-source
            // cache (an LRU dict that is not thread-safe) can raise a
            // KeyError inside schemathesis, failing the run for no fault of
            // the server.
            "--workers",
            "1",
            "--generation-database",
            "none",
            "--no-color",
            "--report",
            "junit",
            "--report-junit-path",
        ])
        .arg(&report)
        // Its cache and reports go to the test's directory, not the tree.
        .current_dir(dir.path())
        .output();
    let run = tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .expect("schemathesis finishes within 10 minutes")
        .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "schemathesis found failures ({}):\n{stdout}\n{stderr}",
        run.status
    );
    // It really tested: the report names test cases and no failure.
    let junit = std::fs::read_to_string(&report).expect("schemathesis wrote its report");
    assert!(junit.contains("<testcase"), "{junit}");
    assert!(!junit.contains("<failure"), "{junit}");
    println!("{stdout}");
}
