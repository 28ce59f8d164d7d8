//! `tributary tail`: it follows records stored after it started, filtered
//! by parser, source and kind, starts with a backlog on request, and exits
//! cleanly on Ctrl-C.

use std::{process::Stdio, time::Duration};

use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, BufReader, Lines},
    process::{Child, ChildStdout, Command},
};

use crate::support::{BIN, Mesh, send, wait_stored};

/// A running `tributary tail`, started and following.
struct Tail {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Tail {
    /// Starts `tributary tail --json ARGS` against `url` and waits until it
    /// says it follows: records stored from then on are its to show.
    async fn start(url: &str, args: &[&str]) -> Tail {
        let mut child = Command::new(BIN)
            .args(["tail", "--connect", url, "--json", "--poll", "50ms"])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the tributary binary starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let mut errors = BufReader::new(stderr).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), errors.next_line())
            .await
            .expect("tail says within 30 s that it follows")
            .expect("stderr is readable")
            .expect("tail runs until it follows");
        assert!(first.starts_with("tail: following "), "{first}");
        let stdout = child.stdout.take().expect("stdout is piped");
        Tail {
            child,
            lines: BufReader::new(stdout).lines(),
        }
    }

    /// The next `n` records it prints, as JSON.
    async fn records(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let line = tokio::time::timeout(Duration::from_secs(30), self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("record {} of {n} within 30 s: {out:#?}", out.len()))
                .expect("stdout is readable")
                .unwrap_or_else(|| panic!("tail ended after {} of {n} records", out.len()));
            out.push(serde_json::from_str(&line).expect("each line is one JSON record"));
        }
        out
    }
}

/// `(source, seq)` of each record, in the order printed.
fn keys(records: &[Value]) -> Vec<(String, u64)> {
    records
        .iter()
        .map(|r| {
            let record = &r["record"];
            let seq = record["seq"].as_str().unwrap_or("0").parse().unwrap();
            (record["source"].as_str().unwrap().to_owned(), seq)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_shows_records_stored_after_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = Mesh::start_bare(dir.path(), "127.0.0.1:0", &["--parser", "raw"]).await;
    let channel = mesh.channel().await;
    send(
        &mesh.url(),
        &["-n", "50", "--kind", "text", "--source", "before"],
    )
    .await;
    wait_stored(&channel, "raw", 50, Duration::from_secs(30)).await;

    let mut tail = Tail::start(&mesh.url(), &["--count", "200"]).await;
    send(
        &mesh.url(),
        &["-n", "200", "--kind", "text", "--source", "after"],
    )
    .await;
    let records = tail.records(200).await;
    let want: Vec<(String, u64)> = (0..200).map(|seq| ("after".to_owned(), seq)).collect();
    let mut got = keys(&records);
    got.sort();
    assert_eq!(got, want, "every new record once, none from before");
    assert!(records.iter().all(|r| r["parser"] == "raw"));
    // Oldest first: ids ascend.
    let ids: Vec<i64> = records
        .iter()
        .map(|r| r["id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    // --count ends it, with success.
    let status = tokio::time::timeout(Duration::from_secs(10), tail.child.wait())
        .await
        .expect("tail exits after --count records")
        .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_filters_by_parser_source_and_kind_and_starts_with_a_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = Mesh::start_bare(
        dir.path(),
        "127.0.0.1:0",
        &["--parser", "raw", "--parser", "uppercase"],
    )
    .await;
    let channel = mesh.channel().await;
    send(
        &mesh.url(),
        &["-n", "10", "--kind", "sensor", "--source", "old"],
    )
    .await;
    wait_stored(&channel, "raw", 10, Duration::from_secs(30)).await;
    wait_stored(&channel, "uppercase", 10, Duration::from_secs(30)).await;

    // The last three of `old` that raw stored, then nothing else of it.
    let mut backlog = Tail::start(
        &mesh.url(),
        &["--parser", "raw", "--source", "old", "-n", "3"],
    )
    .await;
    let records = backlog.records(3).await;
    assert_eq!(
        keys(&records),
        [7, 8, 9].map(|seq| ("old".to_owned(), seq)),
        "the backlog, oldest first"
    );

    // Only raw's JSON records from `new`.
    let mut filtered = Tail::start(
        &mesh.url(),
        &["--parser", "raw", "--source", "new", "--kind", "json"],
    )
    .await;
    let mut unfiltered = Tail::start(&mesh.url(), &[]).await;
    // Text from `new` (which uppercase stores too), JSON from `other`, then
    // JSON from `new`: the filter must skip the first two.
    let text = |source: &str, seq: u64| json!({"source": source, "seq": seq.to_string(), "text": {"body": "t"}});
    let order = |source: &str, seq: u64| json!({"source": source, "seq": seq.to_string(), "json": {"order": seq}});
    let mut records: Vec<Value> = (0..10).map(|seq| text("new", seq)).collect();
    records.extend((0..10).map(|seq| order("other", seq)));
    records.extend((10..25).map(|seq| order("new", seq)));
    let answer: Value = reqwest::Client::new()
        .post(format!("{}/v1/records", mesh.url()))
        .json(&json!({ "records": records }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["accepted"], 35, "{answer}");
    let shown = filtered.records(15).await;
    assert_eq!(
        keys(&shown),
        (10..25)
            .map(|seq| ("new".to_owned(), seq))
            .collect::<Vec<_>>()
    );
    for record in &shown {
        assert_eq!(record["parser"], "raw", "{record}");
        let seq: f64 = record["record"]["seq"].as_str().unwrap().parse().unwrap();
        assert_eq!(
            record["record"]["json"]["order"].as_f64(),
            Some(seq),
            "{record}"
        );
    }
    // The unfiltered tail shows all 35 that raw stored and the 10 text
    // records uppercase stored.
    let all = unfiltered.records(45).await;
    let raw = all.iter().filter(|r| r["parser"] == "raw").count();
    let upper = all.iter().filter(|r| r["parser"] == "uppercase").count();
    assert_eq!((raw, upper), (35, 10));
    // The backlog tail follows `old` only: one more record from it shows
    // after all of the above, with nothing in between.
    send(
        &mesh.url(),
        &["-n", "11", "--kind", "sensor", "--source", "old"],
    )
    .await;
    let next = backlog.records(1).await;
    assert_eq!(keys(&next), [("old".to_owned(), 10)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_exits_cleanly_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = Mesh::start_bare(dir.path(), "127.0.0.1:0", &["--parser", "raw"]).await;
    let mut tail = Tail::start(&mesh.url(), &[]).await;
    let pid = tail.child.id().expect("tail is running").to_string();
    let killed = Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), tail.child.wait())
        .await
        .expect("tail exits within 10 s of Ctrl-C")
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(tail.lines.next_line().await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_refuses_bad_flags_with_a_reason() {
    for (args, reason) in [
        (&["--kind", "nope"][..], "unknown kind"),
        (&["--backlog", "5000"][..], "at most 1000"),
        (&["--poll", "5ms"][..], "--poll"),
        (&["--parser", "a.b"][..], "--parser"),
    ] {
        let output = Command::new(BIN)
            .args(["tail", "--connect", "http://127.0.0.1:1"])
            .args(args)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}");
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
    }
}

/// A server follows at most `MAX_TAILS` tails: one more is refused with
/// RESOURCE_EXHAUSTED, and a tail whose client went away frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tails_past_the_limit_are_refused_until_one_goes_away() {
    use tributary::{
        proto::{TailRecordsRequest, query_client::QueryClient},
        ranges::MAX_TAILS,
    };
    let dir = tempfile::tempdir().unwrap();
    let mesh = Mesh::start_bare(dir.path(), "127.0.0.1:0", &["--parser", "raw"]).await;
    let mut client = QueryClient::new(mesh.channel().await);
    let mut open = Vec::new();
    for _ in 0..MAX_TAILS {
        let stream = client
            .tail_records(TailRecordsRequest::default())
            .await
            .expect("a tail within the limit is followed")
            .into_inner();
        open.push(stream);
    }
    let refused = client
        .tail_records(TailRecordsRequest::default())
        .await
        .expect_err("one tail past the limit is refused");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    // The client of one tail goes away: its place comes free.
    drop(open.pop());
    let mut again = client.clone();
    crate::support::eventually(
        "a tail to be followed again once one went away",
        Duration::from_secs(10),
        async || match again.tail_records(TailRecordsRequest::default()).await {
            Ok(stream) => Ok(stream.into_inner()),
            Err(status) => Err(status.code()),
        },
    )
    .await;
}
