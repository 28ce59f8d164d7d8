//! What more than one benchmark needs.

use std::{path::Path, process::Stdio, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};
use tributary::proto::{GetStatsRequest, query_client::QueryClient};

const BIN: &str = env!("CARGO_BIN_EXE_tributary");

/// Returns once `parser` has stored at least `count` records, asking the
/// query API at `url` every 5 ms (a benchmark's clock runs meanwhile, so the
/// poll is short).
pub async fn wait_stored(url: &str, parser: &str, count: u64) {
    let mut query = QueryClient::connect(url.to_owned()).await.unwrap();
    loop {
        let stats = query
            .get_stats(GetStatsRequest {})
            .await
            .unwrap()
            .into_inner();
        if stats
            .parsers
            .iter()
            .any(|p| p.parser == parser && p.stored >= count)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Serves a store a benchmark filled, on a free port: `up --no-workloads`
/// over the SQLite files in `dir` for `SQLite`, else `api --store URL`.
/// Returns the process (killed when dropped) and its address.
#[allow(dead_code)] // not every benchmark serves a store it filled
pub async fn serve_store(backend: &str, dir: &Path, url: &str) -> (Child, String) {
    let mut command = Command::new(BIN);
    if backend == "SQLite" {
        command
            .args(["up", "--no-workloads", "--data-dir"])
            .arg(dir);
    } else {
        command.args(["api", "--store", url]);
    }
    spawn_announcing(command.args(["--listen", "127.0.0.1:0"])).await
}

/// Spawns `command` (killed when dropped, logging warnings only) and waits
/// for its first line, `listening on ADDR`; returns the process and ADDR.
#[allow(dead_code)] // not every benchmark starts a server
pub async fn spawn_announcing(command: &mut Command) -> (Child, String) {
    let mut child = command
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next_line().await.unwrap().unwrap();
    let addr = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .trim_start_matches("http://")
        .to_owned();
    (child, addr)
}
