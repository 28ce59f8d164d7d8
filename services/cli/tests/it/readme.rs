//! The README's shell blocks, run as written: each ```` ```sh ```` block
//! runs with `bash -e` from the repository root against a fresh
//! `tributary up` on a free port. The only change made to a block is the
//! port: `localhost:8080` and `127.0.0.1:8080` become the test's address,
//! and `TRIBUTARY_CONNECT` points the commands that default to port 8080
//! there. `tributary` and `grpcurl` are on `PATH`, as a user's install
//! would have them.
//!
//! A block that cannot run here (a server that runs until stopped, Docker,
//! a placeholder) carries `<!-- readme-test: skip: REASON -->` on the line
//! before its fence; one run by a test of its own carries
//! `<!-- readme-test: NAME -->`. Every other block must exit 0 within
//! [`BLOCK_TIMEOUT`].

use std::{path::Path, process::Stdio, time::Duration};

use tokio::process::Command;

use crate::support::{BIN, Mesh, tool};

/// Long enough for `cargo run --release` to find its build fresh and send
/// 100,000 records to a debug build; short enough that a block that hangs
/// fails the test.
const BLOCK_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, PartialEq)]
struct Block {
    /// The line of the opening fence, 1-based.
    line: usize,
    /// The `readme-test:` marker on the line before the fence, if any.
    marker: Option<String>,
    text: String,
}

/// Every ```` ```sh ```` block of `readme`, with its marker.
fn blocks(readme: &str) -> Vec<Block> {
    let lines: Vec<&str> = readme.lines().collect();
    let mut found = Vec::new();
    let mut at = 0;
    while at < lines.len() {
        if lines[at].trim_end() != "```sh" {
            at += 1;
            continue;
        }
        let marker = at
            .checked_sub(1)
            .and_then(|before| lines[before].trim().strip_prefix("<!-- readme-test:"))
            .and_then(|rest| rest.strip_suffix("-->"))
            .map(|marker| marker.trim().to_owned());
        let end = (at + 1..lines.len())
            .find(|&i| lines[i].trim_end() == "```")
            .unwrap_or(lines.len());
        found.push(Block {
            line: at + 1,
            marker,
            text: lines[at + 1..end].join("\n") + "\n",
        });
        at = end + 1;
    }
    found
}

#[test]
fn blocks_are_found_with_their_markers() {
    let readme = "text\n<!-- readme-test: skip: why -->\n```sh\na\nb\n```\n```sh\nc\n```\n";
    assert_eq!(
        blocks(readme),
        [
            Block {
                line: 3,
                marker: Some("skip: why".into()),
                text: "a\nb\n".into()
            },
            Block {
                line: 7,
                marker: None,
                text: "c\n".into()
            },
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_readme_shell_block_runs_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(BIN, bin.join("tributary")).unwrap();
    std::os::unix::fs::symlink(tool("TRIBUTARY_GRPCURL"), bin.join("grpcurl")).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // With the workloads on, the reads the README shows answer real rows.
    let mesh = Mesh::start_with_workloads(&dir.path().join("data"), "127.0.0.1:0", &[]).await;
    let addr = mesh.addr.to_string();

    let (mut ran, mut skipped, mut failures) = (0, 0, Vec::new());
    for block in blocks(&readme) {
        match block.marker.as_deref() {
            Some(marker) if marker.starts_with("skip") => {
                let reason = marker
                    .trim_start_matches("skip")
                    .trim_start_matches(':')
                    .trim();
                assert!(
                    !reason.is_empty(),
                    "README line {}: a skipped block must say why",
                    block.line
                );
                println!("README line {}: skipped: {reason}", block.line);
                skipped += 1;
                continue;
            }
            Some(name) => {
                println!("README line {}: run by its own test ({name})", block.line);
                skipped += 1;
                continue;
            }
            None => {}
        }
        let script = block
            .text
            .replace("localhost:8080", &addr)
            .replace("127.0.0.1:8080", &addr);
        let run = Command::new("bash")
            .args(["-e", "-c", &script])
            .current_dir(&root)
            .env("PATH", &path)
            .env("TRIBUTARY_CONNECT", mesh.url())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        ran += 1;
        match tokio::time::timeout(BLOCK_TIMEOUT, run).await {
            Err(_) => failures.push(format!(
                "README line {}: still running after {BLOCK_TIMEOUT:?}:\n{script}",
                block.line
            )),
            Ok(output) => {
                let output = output.expect("bash runs");
                let tail = |bytes: &[u8]| {
                    let text = String::from_utf8_lossy(bytes);
                    let lines: Vec<&str> = text.lines().collect();
                    lines[lines.len().saturating_sub(15)..].join("\n")
                };
                if output.status.success() {
                    println!("README line {}: ran\n{}", block.line, tail(&output.stdout));
                } else {
                    failures.push(format!(
                        "README line {}: {}\n{script}\nstdout:\n{}\nstderr:\n{}",
                        block.line,
                        output.status,
                        tail(&output.stdout),
                        tail(&output.stderr)
                    ));
                }
            }
        }
    }
    println!("{ran} blocks ran, {skipped} skipped");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    // The README's read and send examples are among what ran.
    assert!(ran >= 5, "only {ran} blocks ran");
}
