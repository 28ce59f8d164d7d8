//! Starting `tributary` processes and talking to them.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};
use tonic::transport::Channel;
use tributary::proto::{GetStatsRequest, ListRecordsRequest, Record, query_client::QueryClient};

pub const BIN: &str = env!("CARGO_BIN_EXE_tributary");

/// A running `tributary up`.
pub struct Mesh {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Mesh {
    /// Starts `tributary up --no-workloads` on `listen` with its data in
    /// `data_dir`, and waits for it to print its address: the mesh alone,
    /// with only the parsers `extra` asks for.
    pub async fn start_bare(data_dir: &Path, listen: &str, extra: &[&str]) -> Mesh {
        let mut args = vec!["--no-workloads"];
        args.extend_from_slice(extra);
        Self::start_with_workloads(data_dir, listen, &args).await
    }

    /// Starts `tributary up` as a user would, with its demo workloads unless
    /// `extra` turns them off.
    pub async fn start_with_workloads(data_dir: &Path, listen: &str, extra: &[&str]) -> Mesh {
        let data_dir = data_dir.to_str().expect("temp paths are UTF-8");
        let mut args = vec!["up", "--listen", listen, "--data-dir", data_dir];
        args.extend_from_slice(extra);
        let (child, addr) = spawn_listening(&args).await;
        Mesh { child, addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .unwrap()
            .connect()
            .await
            .expect("the mesh accepts connections")
    }

    /// SIGKILL: no chance to flush anything.
    pub async fn kill9(mut self) {
        self.child.kill().await.expect("the process can be killed");
    }
}

/// Starts `tributary ARGS…` and waits for it to print the address it
/// serves on.
pub async fn spawn_listening(args: &[&str]) -> (Child, SocketAddr) {
    let mut child = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the tributary binary starts");
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .unwrap_or_else(|_| panic!("tributary {args:?} prints its address within 60 s"))
        .expect("stdout is readable")
        .unwrap_or_else(|| panic!("tributary {args:?} exited before printing its address"));
    let addr = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .expect("the printed address parses");
    (child, addr)
}

/// Records stored by `parser`, as the Query API reports them.
pub async fn stored(channel: &Channel, parser: &str) -> u64 {
    let stats = QueryClient::new(channel.clone())
        .get_stats(GetStatsRequest {})
        .await
        .expect("GetStats answers")
        .into_inner();
    stats
        .parsers
        .iter()
        .find(|p| p.parser == parser)
        .map_or(0, |p| p.stored)
}

/// Polls `stored` until it reaches `want`, failing after `within`.
pub async fn wait_stored(channel: &Channel, parser: &str, want: u64, within: Duration) {
    let now = eventually(
        &format!("{parser} storing {want} records"),
        within,
        async || {
            let now = stored(channel, parser).await;
            ready_if(now >= want, now)
        },
    )
    .await;
    assert_eq!(now, want, "{parser} stored more records than were sent");
}

/// Polls a probe until it answers `Ok` (the library's test helper).
pub use tributary::testkit::eventually;

/// Text that [`eventually`] shows as it is when it fails, lines and all,
/// rather than escaped: a process's output, a status page.
pub struct Verbatim(pub String);

impl std::fmt::Debug for Verbatim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f)?;
        f.write_str(&self.0)
    }
}

/// A probe's answer for [`eventually`]: `Ok(value)` when `done`, else
/// `Err(value)` as what was seen.
pub fn ready_if<T>(done: bool, value: T) -> Result<T, T> {
    if done { Ok(value) } else { Err(value) }
}

/// (rows, distinct seqs, min seq, max seq) of one source in the SQLite store,
/// read straight from the file.
pub async fn rows_of(data_dir: &Path, parser: &str, source: &str) -> (i64, i64, i64, i64) {
    use sqlx::{Connection, Row};
    let path: PathBuf = data_dir.join("tributary.db");
    let url = format!("sqlite://{}?mode=ro", path.display());
    let mut conn = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("the store file opens");
    let row = sqlx::query(
        "SELECT COUNT(*), COUNT(DISTINCT seq), COALESCE(MIN(seq), -1), COALESCE(MAX(seq), -1) \
         FROM records WHERE parser = ? AND source = ?",
    )
    .bind(parser)
    .bind(source)
    .fetch_one(&mut conn)
    .await
    .expect("the records table is readable");
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

/// Runs `tributary send --json` to completion and returns its summary.
pub async fn send(url: &str, args: &[&str]) -> serde_json::Value {
    send_summary(&mut send_command(url, args)).await
}

/// Runs a [`send_command`] (with whatever the caller added) to completion
/// and returns its summary.
pub async fn send_summary(command: &mut Command) -> serde_json::Value {
    let output = command.output().await.expect("tributary send runs");
    assert!(
        output.status.success(),
        "send failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("send --json prints one JSON object")
}

pub fn send_command(url: &str, args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .arg("send")
        .arg("--connect")
        .arg(url)
        .arg("--json")
        .args(args)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// The path of a tool that `scripts/test.sh` installs; fails loudly when the
/// test is run without it.
pub fn tool(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the tests through scripts/test.sh, which installs the tool")
    })
}

/// Every record `parser` stored, paging through ListRecords.
pub async fn all_records(channel: &Channel, parser: &str) -> Vec<Record> {
    let mut client = QueryClient::new(channel.clone());
    let mut out = Vec::new();
    let mut after_id = 0;
    loop {
        let page = client
            .list_records(ListRecordsRequest {
                parser: parser.into(),
                limit: 1000,
                after_id,
                ..Default::default()
            })
            .await
            .expect("ListRecords answers")
            .into_inner();
        out.extend(page.records.into_iter().map(|r| r.record.unwrap()));
        if page.next_after_id == 0 {
            return out;
        }
        after_id = page.next_after_id;
    }
}
