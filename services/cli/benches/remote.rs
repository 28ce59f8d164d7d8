//! Throughput of a parser written in Python behind the `remote` parser
//! type, against the built-in `uppercase`, in one run on one machine.
//! Prints a Markdown table.
//!
//! Set-up, per case: a fresh `tributary up --no-workloads` with one parser
//! group; `tributary send --kind text -n N` publishes N text records (one
//! stream, its default window); the time runs from the start of `send` to
//! the moment `Query.GetStats` reports all N stored by the group.
//! - `uppercase`: the built-in parser.
//! - `remote (Python)`: `{"type":"remote","endpoint":…,"kinds":["text"]}`
//!   against a plug-in of four lines served by the Python package
//!   (`clients/python`, `tributary.serve_parser`) that upper-cases the text,
//!   with the remote type's defaults (batches of up to 500 records, a
//!   window of 4 batches).
//!
//! Needs the Python package installed: `TRIBUTARY_CLIENT_PYTHON` names a
//! Python that imports `tributary` (`scripts/python-client.sh` makes one).
//!
//! Run: `cargo bench -p tributary-cli --bench remote` (add `-- --records N`;
//! default 100,000).

mod support;

use std::{process::Stdio, time::Instant};

use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_tributary");

/// The Python plug-in: upper-cases each text record, as `uppercase` does.
const PLUGIN: &str = r#"
import tributary
def upper(record):
    return record["text"].upper()
server = tributary.serve_parser(upper, port=0, block=False)
print(f"listening on {server.endpoint}", flush=True)
server.wait()
"#;

#[tokio::main]
async fn main() {
    let records: u64 = std::env::args()
        .skip_while(|a| a != "--records")
        .nth(1)
        .map_or(100_000, |n| n.parse().expect("--records takes a number"));
    let python = std::env::var("TRIBUTARY_CLIENT_PYTHON").expect(
        "TRIBUTARY_CLIENT_PYTHON names a Python with the client installed \
         (scripts/python-client.sh prints one)",
    );

    let builtin = run_case(records, "uppercase", "uppercase").await;

    let (mut plugin, endpoint) =
        support::spawn_announcing(Command::new(&python).args(["-c", PLUGIN])).await;
    let spec = format!(r#"{{"type":"remote","endpoint":"http://{endpoint}","kinds":["text"]}}"#);
    let remote = run_case(records, &spec, "remote").await;
    plugin.kill().await.unwrap();

    println!("| parser | records | seconds | records/s |");
    println!("|---|---|---|---|");
    for (name, seconds) in [
        ("uppercase (built in)", builtin),
        ("remote (Python plug-in)", remote),
    ] {
        println!(
            "| {name} | {records} | {seconds:.2} | {:.0} |",
            records as f64 / seconds
        );
    }
    println!("\nremote / built in: {:.2}", builtin / remote);
}

/// Starts a mesh with `spec`, sends `records` text records, and returns the
/// seconds until `group` stored them all.
async fn run_case(records: u64, spec: &str, group: &str) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_owned();
    let (mut mesh, addr) = support::spawn_announcing(Command::new(BIN).args([
        "up",
        "--no-workloads",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &data,
        "--parser",
        spec,
    ]))
    .await;
    let url = format!("http://{addr}");
    let started = Instant::now();
    let sent = Command::new(BIN)
        .args(["send", "--connect", &url, "--kind", "text", "--json", "-n"])
        .arg(records.to_string())
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .status()
        .await
        .unwrap();
    assert!(sent.success(), "send failed");
    support::wait_stored(&url, group, records).await;
    let seconds = started.elapsed().as_secs_f64();
    mesh.kill().await.unwrap();
    seconds
}
