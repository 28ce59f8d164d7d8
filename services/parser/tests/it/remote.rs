//! The `remote` parser in a real worker, against a real ingest server and
//! SQLite store, with a plug-in served by tonic in this process on an
//! ephemeral port: what it answers is what gets stored, dropped or
//! dead-lettered, and whatever the plug-in does (crash, hang, answer
//! wrongly) every record ends stored exactly once.

use std::{
    collections::HashMap,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use prost::Message as _;
use tokio::{net::TcpListener, sync::mpsc, task::JoinHandle};
use tokio_stream::{Stream, wrappers::ReceiverStream, wrappers::TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tributary::{
    proto::{
        Drop as DropRecord, Keep, ListGroupsRequest, PluginHello, ProcessRequest, ProcessResponse,
        ProcessResult, Record, RecordKind, Text,
        ingest_client::IngestClient,
        process_request::Message,
        process_result::Outcome as Answer,
        record::Payload,
        remote_parser_server::{RemoteParser, RemoteParserServer},
    },
    store::{self, DeadLetterFilter, RecordFilter, Store, StoredRow},
    testkit::eventually,
};
use tributary_ingest::Limits;
use tributary_parser::{Tuning, Worker, parsers::ParserSpec};

use crate::{Server, publish, start_ingest, text};

/// What the test plug-in answers, and what it has seen, across restarts.
#[derive(Default)]
struct Plugin {
    /// Batches received, on every stream.
    batches: AtomicUsize,
    /// The first this many batches are never answered.
    hang: usize,
    /// The first this many batches are answered one result short.
    short: usize,
    /// On receiving the batch of this number (from 0), the plug-in tells
    /// `dying` and answers nothing more: the test then kills it.
    die_at: Option<usize>,
    dying: tokio::sync::Notify,
    hellos: Mutex<Vec<PluginHello>>,
    /// How many times each text body was received.
    seen: Mutex<HashMap<String, usize>>,
}

/// The answer for one record, by its text: `json:NAME` becomes a JSON
/// object, `upper:WORD` the upper-cased text, `drop…` is dropped, `poison`
/// fails, anything else is kept.
fn answer(record: &Record) -> Answer {
    let Some(Payload::Text(Text { body })) = &record.payload else {
        return Answer::Error("the test plug-in takes only text".into());
    };
    if let Some(name) = body.strip_prefix("json:") {
        let json =
            serde_json::json!({ "name": name, "seq": record.seq, "tags": ["a", null, true] });
        let object: pbjson_types::Struct =
            serde_json::from_value(json).expect("a JSON object is a Struct");
        Answer::Json(object)
    } else if let Some(word) = body.strip_prefix("upper:") {
        Answer::Text(word.to_uppercase())
    } else if body.starts_with("drop") {
        Answer::Drop(DropRecord {})
    } else if body == "poison" {
        Answer::Error("cannot digest poison".into())
    } else {
        Answer::Keep(Keep {})
    }
}

impl Plugin {
    /// The answer to batch number `n`, if it gets one.
    fn respond(&self, n: usize, batch_id: u64, records: &[Record]) -> Option<ProcessResponse> {
        let mut seen = self.seen.lock().unwrap();
        for record in records {
            if let Some(Payload::Text(t)) = &record.payload {
                *seen.entry(t.body.clone()).or_default() += 1;
            }
        }
        if self.die_at == Some(n) {
            self.dying.notify_one();
        }
        if n < self.hang || self.die_at.is_some_and(|at| n >= at) {
            return None;
        }
        let mut results: Vec<ProcessResult> = records
            .iter()
            .map(|r| ProcessResult {
                outcome: Some(answer(r)),
            })
            .collect();
        if n < self.short {
            results.pop();
        }
        Some(ProcessResponse { batch_id, results })
    }

    fn seen(&self, body: &str) -> usize {
        self.seen.lock().unwrap().get(body).copied().unwrap_or(0)
    }
}

/// One instance of the plug-in's server.
struct PluginServer {
    state: Arc<Plugin>,
    /// Ends its streams at once, as a crash would.
    kill: CancellationToken,
}

#[tonic::async_trait]
impl RemoteParser for PluginServer {
    type ProcessStream = Pin<Box<dyn Stream<Item = Result<ProcessResponse, Status>> + Send>>;

    async fn process(
        &self,
        request: Request<Streaming<ProcessRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let mut requests = request.into_inner();
        let (answers, answers_rx) = mpsc::channel(64);
        let state = self.state.clone();
        let kill = self.kill.clone();
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    () = kill.cancelled() => {
                        let _ = answers.send(Err(Status::unavailable("killed"))).await;
                        return;
                    }
                    message = requests.message() => message,
                };
                match message {
                    Ok(Some(ProcessRequest {
                        message: Some(Message::Hello(hello)),
                    })) => state.hellos.lock().unwrap().push(hello),
                    Ok(Some(ProcessRequest {
                        message: Some(Message::Batch(batch)),
                    })) => {
                        let n = state.batches.fetch_add(1, Ordering::SeqCst);
                        if let Some(answer) = state.respond(n, batch.batch_id, &batch.records)
                            && answers.send(Ok(answer)).await.is_err()
                        {
                            return;
                        }
                    }
                    _ => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(answers_rx))))
    }
}

/// A running plug-in server.
struct Running {
    addr: SocketAddr,
    kill: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    /// Serves `state` on `addr` (port 0 for a free one).
    async fn start(state: Arc<Plugin>, addr: &str) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let kill = CancellationToken::new();
        let service = RemoteParserServer::new(PluginServer {
            state,
            kill: kill.clone(),
        });
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        Self { addr, kill, task }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Ends its streams and drops the server task, listener and all.
    async fn kill(self) {
        self.kill.cancel();
        self.task.abort();
        assert!(self.task.await.unwrap_err().is_cancelled());
    }
}

/// An ingest server, a SQLite store and a worker running `spec`.
struct Mesh {
    server: Server,
    store: Arc<dyn Store>,
    group: String,
    shutdown: CancellationToken,
    worker: JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Mesh {
    async fn start(limits: Limits, spec: &str, records: Vec<Record>) -> Self {
        let server = start_ingest(limits).await;
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            store::open(&format!("sqlite://{}", dir.path().join("s.db").display()))
                .await
                .unwrap();
        // Published in batches of 10, so that the worker gathers several
        // deliveries and the plug-in sees several batches.
        for chunk in records.chunks(10) {
            publish(&server.url, chunk.to_vec()).await;
        }
        let spec = ParserSpec::from_spec(spec).unwrap();
        let shutdown = CancellationToken::new();
        let worker = Worker {
            link: tributary::channel::Link::plain(server.url.clone()),
            group: spec.group.clone(),
            parser: spec.config.build(),
            store: store.clone(),
            tuning: Tuning {
                linger: Duration::from_millis(1),
                ..Tuning::default()
            },
        };
        let worker = tokio::spawn(worker.run(shutdown.clone()));
        Self {
            server,
            store,
            group: spec.group,
            shutdown,
            worker,
            _dir: dir,
        }
    }

    /// Waits until the group has stored `stored` records and
    /// dead-lettered `dead`, and the queue holds nothing unacked for it,
    /// then checks no more than that was stored.
    async fn settled(&self, stored: u64, dead: u64) {
        let mut ingest = IngestClient::connect(self.server.url.clone())
            .await
            .unwrap();
        let seen = eventually(
            &format!("{stored} stored, {dead} dead-lettered and nothing unacked"),
            Duration::from_secs(60),
            async || {
                let counts = self.store.counts().await.unwrap();
                let lag = ingest
                    .list_groups(ListGroupsRequest {})
                    .await
                    .unwrap()
                    .into_inner()
                    .groups
                    .into_iter()
                    .find(|g| g.name == self.group)
                    .map(|g| g.lag);
                let mine = counts
                    .parsers
                    .iter()
                    .find(|(parser, _)| *parser == self.group)
                    .map_or(0, |(_, n)| *n);
                let seen = (mine, counts.dead_letters, lag);
                if counts.dead_letters > dead {
                    let letters = self
                        .store
                        .dead_letters(&DeadLetterFilter {
                            parser: Some(self.group.clone()),
                            after_id: 0,
                            limit: 10,
                        })
                        .await
                        .unwrap();
                    let errors: Vec<&str> = letters.iter().map(|d| d.error.as_str()).collect();
                    panic!("dead-lettered beyond {dead}: {errors:?}");
                }
                if mine >= stored && counts.dead_letters >= dead && lag == Some(0) {
                    Ok(seen)
                } else {
                    Err(seen)
                }
            },
        )
        .await;
        assert_eq!(seen, (stored, dead, Some(0)), "stored more than expected");
    }

    async fn rows(&self) -> Vec<StoredRow> {
        self.store
            .records(&RecordFilter {
                parser: Some(self.group.clone()),
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.worker.await.unwrap().unwrap();
        self.server.shutdown.cancel();
    }
}

fn texts(bodies: &[&str]) -> Vec<Record> {
    bodies
        .iter()
        .enumerate()
        .map(|(seq, body)| text(seq as u64, body))
        .collect()
}

/// Results become the stored payloads, JSON and text, once each; a kept
/// record is stored as delivered; the plug-in hears the group's name.
#[tokio::test]
async fn json_and_text_results_are_stored_once() {
    let plugin = Arc::new(Plugin::default());
    let server = Running::start(plugin.clone(), "127.0.0.1:0").await;
    let spec = format!(
        r#"{{"type":"remote","endpoint":"{}","group":"orders","kinds":["text"]}}"#,
        server.endpoint()
    );
    let mesh = Mesh::start(
        Limits::default(),
        &spec,
        texts(&["json:ada", "upper:shout", "as is"]),
    )
    .await;
    mesh.settled(3, 0).await;
    let rows = mesh.rows().await;
    let stored: Vec<(u64, i32, Option<Payload>)> = rows
        .iter()
        .map(|row| {
            let record = Record::decode(row.body.as_slice()).unwrap();
            (record.seq, row.kind, record.payload)
        })
        .collect();
    let Answer::Json(json) = answer(&text(0, "json:ada")) else {
        unreachable!()
    };
    assert_eq!(
        stored,
        vec![
            (0, RecordKind::Json as i32, Some(Payload::Json(json))),
            (
                1,
                RecordKind::Text as i32,
                Some(Payload::Text(Text {
                    body: "SHOUT".into()
                }))
            ),
            (
                2,
                RecordKind::Text as i32,
                Some(Payload::Text(Text {
                    body: "as is".into()
                }))
            ),
        ]
    );
    let hellos = plugin.hellos.lock().unwrap().clone();
    assert_eq!(
        hellos,
        vec![PluginHello {
            parser: "orders".into(),
            window: 4
        }]
    );
    mesh.stop().await;
    server.kill().await;
}

/// Dropped records are acknowledged (the queue holds nothing for the
/// group, and the plug-in saw them once) and never stored.
#[tokio::test]
async fn dropped_records_are_acked_without_being_stored() {
    let plugin = Arc::new(Plugin::default());
    let server = Running::start(plugin.clone(), "127.0.0.1:0").await;
    let spec = format!(r#"{{"type":"remote","endpoint":"{}"}}"#, server.endpoint());
    let mesh = Mesh::start(
        Limits::default(),
        &spec,
        texts(&["drop me", "kept", "drop me too"]),
    )
    .await;
    mesh.settled(1, 0).await;
    let rows = mesh.rows().await;
    let seqs: Vec<u64> = rows
        .iter()
        .map(|row| Record::decode(row.body.as_slice()).unwrap().seq)
        .collect();
    assert_eq!(seqs, [1]);
    assert_eq!((plugin.seen("drop me"), plugin.seen("drop me too")), (1, 1));
    mesh.stop().await;
    server.kill().await;
}

/// The one record the plug-in refuses is retried, then dead-lettered with
/// the plug-in's message; the others of its delivery are stored.
#[tokio::test]
async fn a_refused_record_is_dead_lettered_with_the_plug_ins_message() {
    let plugin = Arc::new(Plugin::default());
    let server = Running::start(plugin.clone(), "127.0.0.1:0").await;
    let spec = format!(r#"{{"type":"remote","endpoint":"{}"}}"#, server.endpoint());
    let limits = Limits {
        max_attempts: 3,
        ..Limits::default()
    };
    let mesh = Mesh::start(limits, &spec, texts(&["fine", "poison", "also fine"])).await;
    mesh.settled(2, 1).await;
    let dead = mesh
        .store
        .dead_letters(&DeadLetterFilter {
            parser: Some("remote".into()),
            after_id: 0,
            limit: 10,
        })
        .await
        .unwrap();
    let dead: Vec<(u64, &str, u32)> = dead
        .iter()
        .map(|d| {
            let record = Record::decode(d.body.as_slice()).unwrap();
            (record.seq, d.error.as_str(), d.attempts)
        })
        .collect();
    let message = format!("plug-in {}: cannot digest poison", server.endpoint());
    assert_eq!(dead, vec![(1, message.as_str(), 3)]);
    assert_eq!(plugin.seen("poison"), 3);
    mesh.stop().await;
    server.kill().await;
}

/// The plug-in dies with batches unanswered and comes back on the same
/// port: every record is stored exactly once, none dead-lettered.
#[tokio::test]
async fn a_plug_in_killed_mid_stream_and_restarted_loses_nothing() {
    let dying = Arc::new(Plugin {
        die_at: Some(3),
        ..Plugin::default()
    });
    let server = Running::start(dying.clone(), "127.0.0.1:0").await;
    let addr = server.addr;
    let spec = format!(
        r#"{{"type":"remote","endpoint":"{}","batch":10,"window":2,"timeout":"5s"}}"#,
        server.endpoint()
    );
    let bodies: Vec<String> = (0..300).map(|i| format!("record {i}")).collect();
    let records = bodies
        .iter()
        .enumerate()
        .map(|(seq, body)| text(seq as u64, body))
        .collect();
    let mesh = Mesh::start(Limits::default(), &spec, records).await;
    tokio::time::timeout(Duration::from_secs(30), dying.dying.notified())
        .await
        .expect("the plug-in received its fourth batch");
    server.kill().await;
    let healthy = Arc::new(Plugin::default());
    let server = Running::start(healthy.clone(), &addr.to_string()).await;
    mesh.settled(300, 0).await;
    let mut seqs: Vec<u64> = mesh
        .rows()
        .await
        .iter()
        .map(|row| Record::decode(row.body.as_slice()).unwrap().seq)
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..300).collect::<Vec<u64>>());
    assert!(
        healthy.batches.load(Ordering::SeqCst) > 0,
        "the restarted plug-in did the rest"
    );
    mesh.stop().await;
    server.kill().await;
}

/// A plug-in that does not answer within the timeout has its batch
/// failed and retried; the retry is answered and stored. The failure is
/// counted and the plug-in shows connected again.
#[tokio::test]
async fn a_batch_past_the_timeout_is_retried() {
    tributary::metrics::install();
    let plugin = Arc::new(Plugin {
        hang: 1,
        ..Plugin::default()
    });
    let server = Running::start(plugin.clone(), "127.0.0.1:0").await;
    let spec = format!(
        r#"{{"type":"remote","endpoint":"{}","timeout":"300ms"}}"#,
        server.endpoint()
    );
    let mesh = Mesh::start(Limits::default(), &spec, texts(&["a", "b", "c"])).await;
    mesh.settled(3, 0).await;
    assert!(plugin.batches.load(Ordering::SeqCst) >= 2);
    assert!(plugin.seen("a") >= 2, "the hung batch came again");
    let metrics = tributary::metrics::render();
    let endpoint = server.endpoint();
    let value = |name: &str| {
        let prefix = format!("{name}{{endpoint=\"{endpoint}\"}} ");
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix} in {metrics}"))
            .parse::<f64>()
            .unwrap()
    };
    assert!(value("tributary_parser_plugin_failures_total") >= 1.0);
    assert_eq!(value("tributary_parser_plugin_connected"), 1.0);
    mesh.stop().await;
    server.kill().await;
}

/// An answer with a result missing fails the whole batch, which is
/// retried and then stored whole.
#[tokio::test]
async fn an_answer_with_the_wrong_count_is_retried() {
    let plugin = Arc::new(Plugin {
        short: 1,
        ..Plugin::default()
    });
    let server = Running::start(plugin.clone(), "127.0.0.1:0").await;
    let spec = format!(r#"{{"type":"remote","endpoint":"{}"}}"#, server.endpoint());
    let mesh = Mesh::start(Limits::default(), &spec, texts(&["a", "upper:b", "c"])).await;
    mesh.settled(3, 0).await;
    assert!(plugin.batches.load(Ordering::SeqCst) >= 2);
    assert!(plugin.seen("a") >= 2, "the short-answered batch came again");
    mesh.stop().await;
    server.kill().await;
}

/// A plug-in that is down for longer than all of a record's attempts
/// would take costs no attempt: the worker holds the records until the
/// plug-in comes up, then stores every one, none dead-lettered.
#[tokio::test]
async fn a_plug_in_down_for_longer_than_every_attempt_dead_letters_nothing() {
    tributary::metrics::install();
    // A port with nothing behind it yet.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let endpoint = format!("http://{addr}");
    let spec = format!(r#"{{"type":"remote","endpoint":"{endpoint}","timeout":"100ms"}}"#);
    let limits = Limits {
        max_attempts: 2,
        ..Limits::default()
    };
    let mesh = Mesh::start(limits, &spec, texts(&["a", "b", "c", "d"])).await;
    // Each failed connect is counted: wait for more of them than the
    // records have attempts.
    let prefix = format!("tributary_parser_plugin_failures_total{{endpoint=\"{endpoint}\"}} ");
    eventually(
        "the worker to fail to reach the plug-in 6 times",
        Duration::from_secs(60),
        async || {
            let failures = tributary::metrics::render()
                .lines()
                .find_map(|line| line.strip_prefix(&prefix).map(str::to_owned))
                .and_then(|value| value.parse::<f64>().ok())
                .unwrap_or(0.0);
            if failures >= 6.0 {
                Ok(failures)
            } else {
                Err(failures)
            }
        },
    )
    .await;
    assert_eq!(mesh.store.counts().await.unwrap().dead_letters, 0);
    let server = Running::start(Arc::new(Plugin::default()), &addr.to_string()).await;
    mesh.settled(4, 0).await;
    mesh.stop().await;
    server.kill().await;
}
