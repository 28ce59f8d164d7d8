//! `remote`: hands records to a plug-in (a `RemoteParser` gRPC server
//! written in any language, see `proto/tributary/v1/plugin.proto`) and
//! stores, drops or fails each one as the plug-in answers.
//!
//! One `Process` stream per parser, opened on the first batch and again
//! after a failure, once the client back-off has passed. Records go in
//! plug-in batches of at most `batch` records; at most `window` batches are
//! unanswered at once, and answers are matched by batch id in any order.
//!
//! A batch that fails whole (no connection, a broken stream, no answer
//! within `timeout`, a malformed answer) fails each of its records: the
//! worker nacks them, so they come back, and the queue's attempt count
//! dead-letters a record that fails every time (one that crashes the
//! plug-in, say) instead of stalling the group. The stream is then reset,
//! so that a late answer is never taken for another batch's.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use serde::{Deserialize, Deserializer, de::Error as _};
use tokio::{
    sync::{Semaphore, mpsc, oneshot},
    time::Instant,
};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::{codegen::http::Uri, transport::Endpoint};
use tributary::{
    backoff::Backoff,
    grpc_client, json_check, kind,
    log_throttle::{DEFAULT_INTERVAL, Throttle},
    metrics,
    proto::{
        PluginHello, ProcessBatch, ProcessRequest, ProcessResult, Record, RecordKind, Text,
        process_request::Message, process_result::Outcome as Answer, record::Payload,
        remote_parser_client::RemoteParserClient,
    },
};

use super::{BatchOutcome, Disposition, Outcome, Parser};

/// Options of `remote`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The plug-in's address, `http://HOST:PORT`.
    pub endpoint: String,
    /// Plug-in batches sent and not yet answered, at most (1 to 64).
    #[serde(default = "default_window")]
    pub window: u32,
    /// How long the plug-in has to answer a batch (and to take a
    /// connection): `10s`, `1500ms`, or a number of milliseconds.
    #[serde(default = "default_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// The record kinds to pull, by name (`text`, `json`, …); empty means
    /// every kind.
    #[serde(default, deserialize_with = "kinds")]
    pub kinds: Vec<RecordKind>,
    /// Records per plug-in batch, at most.
    #[serde(default = "default_batch")]
    pub batch: usize,
}

fn default_window() -> u32 {
    4
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_batch() -> usize {
    500
}

/// The largest `window`: enough to keep a plug-in across an ocean busy,
/// few enough that a reset stream fails a bounded number of batches.
pub const MAX_WINDOW: u32 = 64;

/// A duration as `10s` / `1500ms` (humantime) or a number of milliseconds.
fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    match serde_json::Value::deserialize(deserializer)? {
        serde_json::Value::Number(n) => n.as_u64().map(Duration::from_millis).ok_or_else(|| {
            D::Error::custom(format!("timeout {n} is not a whole number of milliseconds"))
        }),
        serde_json::Value::String(text) => humantime::parse_duration(&text).map_err(|e| {
            D::Error::custom(format!(
                "timeout {text:?}: {e} (write it as 10s, 1500ms or a number of milliseconds)"
            ))
        }),
        other => Err(D::Error::custom(format!(
            "timeout must be a duration such as \"10s\" or a number of milliseconds, not {other}"
        ))),
    }
}

/// Record kinds by their names ([`kind::name`]).
fn kinds<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<RecordKind>, D::Error> {
    Vec::<String>::deserialize(deserializer)?
        .iter()
        .map(|name| {
            kind::from_name(name).ok_or_else(|| {
                let known: Vec<&str> = kind::ALL.into_iter().map(kind::name).collect();
                D::Error::custom(format!(
                    "unknown record kind {name:?} (known kinds: {})",
                    known.join(", ")
                ))
            })
        })
        .collect()
}

/// Why `endpoint` is not `http://HOST:PORT`, if it is not.
fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let uri: Uri = endpoint.parse().map_err(|e| format!("{e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err("the scheme must be http".into());
    }
    let Some(authority) = uri.authority() else {
        return Err("no host".into());
    };
    if authority.as_str().contains('@') {
        return Err("user information is not allowed".into());
    }
    if authority.host().is_empty() {
        return Err("no host".into());
    }
    if authority.port_u16().is_none() {
        return Err("no port".into());
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err("a path or query is not allowed".into());
    }
    Ok(())
}

impl Config {
    pub fn check(&self) -> Result<(), String> {
        check_endpoint(&self.endpoint).map_err(|why| {
            format!(
                "remote: endpoint must be http://HOST:PORT, not {:?} ({why})",
                self.endpoint
            )
        })?;
        if !(1..=MAX_WINDOW).contains(&self.window) {
            return Err(format!(
                "remote: window must be from 1 to {MAX_WINDOW}, not {}",
                self.window
            ));
        }
        if self.timeout.is_zero() {
            return Err("remote: timeout must be more than 0".into());
        }
        if self.batch == 0 {
            return Err("remote: batch must be at least 1".into());
        }
        Ok(())
    }

    pub fn build(&self) -> Remote {
        let connected =
            metrics::gauge!(metrics::PARSER_PLUGIN_CONNECTED, "endpoint" => self.endpoint.clone());
        connected.set(0.0);
        Remote {
            endpoint: self.endpoint.clone(),
            window: self.window.clamp(1, MAX_WINDOW),
            timeout: self.timeout,
            kinds: self.kinds.clone(),
            batch: self.batch.max(1),
            group: Mutex::new(<Self as super::ParserType>::NAME.to_owned()),
            link: tokio::sync::Mutex::new(Link {
                session: None,
                backoff: Backoff::client(),
                retry_at: None,
                last_error: None,
            }),
            connected,
            failures: metrics::counter!(metrics::PARSER_PLUGIN_FAILURES, "endpoint" => self.endpoint.clone()),
        }
    }
}

impl super::ParserType for Config {
    const NAME: &'static str = "remote";

    fn check(&self) -> Result<(), String> {
        Config::check(self)
    }

    fn build(&self) -> Arc<dyn Parser> {
        Arc::new(Config::build(self))
    }
}

/// The `remote` parser.
pub struct Remote {
    endpoint: String,
    window: u32,
    timeout: Duration,
    kinds: Vec<RecordKind>,
    batch: usize,
    /// The consumer group, named to the plug-in in the hello.
    group: Mutex<String>,
    /// The stream, behind a lock that opening it holds: one connect at a
    /// time, and every batch waits for it.
    link: tokio::sync::Mutex<Link>,
    connected: metrics::Gauge,
    failures: metrics::Counter,
}

/// The stream to the plug-in and what reopening it waits for.
struct Link {
    session: Option<Arc<Session>>,
    /// Waits between failed sessions; reset when a batch is answered.
    backoff: Backoff,
    /// No connect before this.
    retry_at: Option<Instant>,
    /// Why the last connect or session failed, while it is not healed.
    last_error: Option<String>,
}

/// One open `Process` stream.
struct Session {
    requests: mpsc::Sender<ProcessRequest>,
    /// The batches waiting for their answer, and why the stream closed.
    pending: Arc<Mutex<Pending>>,
    /// One permit per batch that may be unanswered.
    window: Semaphore,
    next_id: AtomicU64,
    /// Cancelled when the stream closes, for any reason.
    closed: CancellationToken,
    /// The parser's `connected` gauge, set to 0 when the stream closes.
    connected: metrics::Gauge,
    /// Closes the stream (and stops its reader) when the session goes.
    _close_on_drop: DropGuard,
}

type Answered = Result<Vec<ProcessResult>, String>;

#[derive(Default)]
struct Pending {
    waiting: HashMap<u64, oneshot::Sender<Answered>>,
    /// Set once, when the stream closes; every later batch fails with it.
    closed: Option<String>,
}

/// Locks a mutex whose guarded sections cannot panic half-way.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Closes a session's stream: the batches waiting, and any sent later,
/// fail with `reason`. The first close shows the plug-in disconnected.
fn close(
    pending: &Mutex<Pending>,
    closed: &CancellationToken,
    connected: &metrics::Gauge,
    reason: String,
) {
    let waiting = {
        let mut pending = lock(pending);
        if pending.closed.is_none() {
            pending.closed = Some(reason.clone());
            connected.set(0.0);
        }
        std::mem::take(&mut pending.waiting)
    };
    for (_, waiter) in waiting {
        let _ = waiter.send(Err(reason.clone()));
    }
    closed.cancel();
}

impl Session {
    fn close(&self, reason: String) {
        close(&self.pending, &self.closed, &self.connected, reason);
    }

    /// Why the stream closed.
    fn reason(&self) -> String {
        lock(&self.pending)
            .closed
            .clone()
            .unwrap_or_else(|| "the stream closed".into())
    }
}

/// An error and its causes, as one line: tonic's transport errors say
/// little more than "transport error" alone.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn status_text(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// Reads a stream's answers and hands each to the batch it names, until
/// the stream ends, breaks or is closed.
async fn read_answers(
    mut client: RemoteParserClient<grpc_client::TracedChannel>,
    requests: mpsc::Receiver<ProcessRequest>,
    pending: Arc<Mutex<Pending>>,
    closed: CancellationToken,
    connected: metrics::Gauge,
) {
    // Opened here rather than before the first batch is sent: a server may
    // hold its response headers back until its first answer (gRPC's
    // Python server does), which needs a batch to answer.
    let opened = tokio::select! {
        () = closed.cancelled() => return,
        opened = client.process(ReceiverStream::new(requests)) => opened,
    };
    let mut answers = match opened {
        Ok(response) => response.into_inner(),
        Err(status) => {
            let reason = format!("refused the stream ({})", status_text(&status));
            return close(&pending, &closed, &connected, reason);
        }
    };
    let reason = loop {
        let message = tokio::select! {
            () = closed.cancelled() => return,
            message = answers.message() => message,
        };
        match message {
            Ok(Some(answer)) => {
                let waiter = lock(&pending).waiting.remove(&answer.batch_id);
                match waiter {
                    Some(waiter) => {
                        let _ = waiter.send(Ok(answer.results));
                    }
                    None => {
                        break format!(
                            "answered batch {}, which is not waiting for an answer",
                            answer.batch_id
                        );
                    }
                }
            }
            Ok(None) => break "ended the stream".into(),
            Err(status) => break format!("broke the stream ({})", status_text(&status)),
        }
    };
    close(&pending, &closed, &connected, reason);
}

impl Remote {
    /// A failure of the plug-in, as its records' error says it.
    fn failed(&self, what: &str) -> String {
        format!("plug-in {}: {what}", self.endpoint)
    }

    /// The open stream, opened now if there is none (waiting out the
    /// back-off of earlier failures, up to `timeout`).
    async fn session(&self) -> Result<Arc<Session>, String> {
        let mut link = self.link.lock().await;
        if let Some(session) = &link.session {
            if !session.closed.is_cancelled() {
                return Ok(session.clone());
            }
            let reason = session.reason();
            link.session = None;
            link.retry_at = Some(Instant::now() + link.backoff.next_wait());
            static DOWN: Throttle = Throttle::new(DEFAULT_INTERVAL);
            if let Some(repeats) = DOWN.admit() {
                tracing::warn!(endpoint = %self.endpoint, error = %reason, repeats, "plug-in stream closed; reopening");
            }
            link.last_error = Some(reason);
        }
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(at) = link.retry_at {
                if at > deadline {
                    // Failing now would charge the records an attempt
                    // at the back-off's pace; waiting out the timeout first
                    // lets a plug-in that restarts keep its records.
                    tokio::time::sleep_until(deadline).await;
                    let last = link.last_error.clone().unwrap_or_default();
                    return Err(format!("not connected ({last})"));
                }
                tokio::time::sleep_until(at).await;
            }
            match self.open().await {
                Ok(session) => {
                    link.retry_at = None;
                    link.session = Some(session.clone());
                    self.connected.set(1.0);
                    let after = link.last_error.take();
                    static UP: Throttle = Throttle::new(DEFAULT_INTERVAL);
                    if let Some(repeats) = UP.admit() {
                        match after {
                            Some(error) => {
                                tracing::info!(endpoint = %self.endpoint, after = %error, repeats, "plug-in stream reopened")
                            }
                            None => {
                                tracing::info!(endpoint = %self.endpoint, repeats, "plug-in stream opened")
                            }
                        }
                    }
                    return Ok(session);
                }
                Err(error) => {
                    self.failures.increment(1);
                    static FAILED: Throttle = Throttle::new(DEFAULT_INTERVAL);
                    if let Some(repeats) = FAILED.admit() {
                        tracing::warn!(endpoint = %self.endpoint, %error, repeats, "cannot connect to the plug-in; retrying");
                    }
                    link.retry_at = Some(Instant::now() + link.backoff.next_wait());
                    let unhealed = format!("not connected ({error})");
                    link.last_error = Some(error);
                    if Instant::now() >= deadline {
                        return Err(unhealed);
                    }
                }
            }
        }
    }

    /// Connects and starts a stream with its hello.
    async fn open(&self) -> Result<Arc<Session>, String> {
        let endpoint = Endpoint::from_shared(self.endpoint.clone())
            .map_err(|e| chain(&e))?
            .connect_timeout(self.timeout)
            .tcp_nodelay(true);
        let channel = grpc_client::connect(&endpoint)
            .await
            .map_err(|e| format!("cannot connect: {}", chain(&e)))?;
        let client = RemoteParserClient::new(channel).max_decoding_message_size(usize::MAX);
        // Room for the hello and a whole window: sending never waits on
        // the stream, only on the window's permits.
        let (requests, request_rx) = mpsc::channel(self.window as usize + 1);
        let hello = ProcessRequest {
            message: Some(Message::Hello(PluginHello {
                parser: lock(&self.group).clone(),
                window: self.window,
            })),
        };
        requests
            .send(hello)
            .await
            .map_err(|_| "the stream closed before its hello".to_owned())?;
        let pending = Arc::new(Mutex::new(Pending::default()));
        let closed = CancellationToken::new();
        tokio::spawn(read_answers(
            client,
            request_rx,
            pending.clone(),
            closed.clone(),
            self.connected.clone(),
        ));
        Ok(Arc::new(Session {
            requests,
            pending,
            window: Semaphore::new(self.window as usize),
            next_id: AtomicU64::new(0),
            connected: self.connected.clone(),
            _close_on_drop: closed.clone().drop_guard(),
            closed,
        }))
    }

    /// Sends one plug-in batch and waits for its answer.
    async fn call(&self, session: &Session, records: &[Record]) -> Answered {
        let _permit = tokio::select! {
            permit = session.window.acquire() => permit.map_err(|_| session.reason())?,
            () = session.closed.cancelled() => return Err(session.reason()),
        };
        let batch_id = session.next_id.fetch_add(1, Ordering::Relaxed);
        let (answer, answered) = oneshot::channel();
        {
            let mut pending = lock(&session.pending);
            if let Some(reason) = &pending.closed {
                return Err(reason.clone());
            }
            pending.waiting.insert(batch_id, answer);
        }
        let request = ProcessRequest {
            message: Some(Message::Batch(ProcessBatch {
                batch_id,
                records: records.to_vec(),
            })),
        };
        if session.requests.send(request).await.is_err() {
            return Err(session.reason());
        }
        match tokio::time::timeout(self.timeout, answered).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(session.reason()),
            Err(_) => Err(format!(
                "no answer within {}",
                humantime::format_duration(self.timeout)
            )),
        }
    }

    /// The outcomes of a plug-in batch's records given its answer. Checks
    /// the whole answer before changing any record, so that on a malformed
    /// one every record stays as delivered.
    fn apply(
        &self,
        records: &mut [Record],
        results: Vec<ProcessResult>,
    ) -> Result<Vec<BatchOutcome>, String> {
        if results.len() != records.len() {
            return Err(format!(
                "answered {} results for {} records",
                results.len(),
                records.len()
            ));
        }
        let mut answers = Vec::with_capacity(results.len());
        for (i, result) in results.into_iter().enumerate() {
            let answer = result
                .outcome
                .ok_or_else(|| format!("result {i} has no outcome"))?;
            match &answer {
                Answer::Json(object) => json_check::check_json(object).map_err(|e| {
                    format!("result {i} is not a JSON payload a record may carry: {e}")
                })?,
                Answer::Text(body) if body.contains('\0') => {
                    return Err(format!(
                        "result {i} is a text holding a NUL character (U+0000), which the store cannot hold"
                    ));
                }
                _ => {}
            }
            answers.push(answer);
        }
        Ok(records
            .iter_mut()
            .zip(answers)
            .map(|(record, answer)| match answer {
                Answer::Json(object) => {
                    record.payload = Some(Payload::Json(object));
                    Ok(Disposition::Store(None))
                }
                Answer::Text(body) => {
                    record.payload = Some(Payload::Text(Text { body }));
                    Ok(Disposition::Store(None))
                }
                Answer::Keep(_) => Ok(Disposition::Store(None)),
                Answer::Drop(_) => Ok(Disposition::Drop),
                Answer::Error(message) if message.is_empty() => {
                    Err(self.failed("refused the record (no message)"))
                }
                Answer::Error(message) => Err(self.failed(&message)),
            })
            .collect())
    }
}

/// `n` copies of a batch-wide error.
fn all_failed(n: usize, error: &str) -> Vec<BatchOutcome> {
    (0..n).map(|_| Err(error.to_owned())).collect()
}

#[async_trait]
impl Parser for Remote {
    fn kinds(&self) -> Vec<RecordKind> {
        self.kinds.clone()
    }

    fn serves(&self, group: &str) {
        *lock(&self.group) = group.to_owned();
    }

    /// Ready once the stream to the plug-in is open: while the plug-in is
    /// down the worker holds the records rather than failing them, so an
    /// outage dead-letters nothing. A plug-in that fails a batch it was
    /// given (crashing on it, or hanging past `timeout`) still charges that
    /// batch an attempt, so a record that kills the plug-in every time ends
    /// in the dead-letter table instead of stalling the group.
    async fn ready(&self) -> Result<(), String> {
        self.session().await.map(|_| ())
    }

    /// One record as a batch of one. The worker always calls
    /// [`process_batch`](Parser::process_batch), the only place a drop can
    /// be carried out; here a drop fails the record (so it is retried,
    /// never lost).
    async fn process(&self, record: &mut Record) -> Outcome {
        match self.process_batch(std::slice::from_mut(record)).await.pop() {
            Some(Ok(Disposition::Store(fact))) => Ok(fact),
            Some(Ok(Disposition::Drop)) => {
                Err(self
                    .failed("dropped the record, which only a batch of the worker can carry out"))
            }
            Some(Err(error)) => Err(error),
            None => Err(self.failed("gave no outcome")),
        }
    }

    async fn process_batch(&self, records: &mut [Record]) -> Vec<BatchOutcome> {
        if records.is_empty() {
            return Vec::new();
        }
        let session = match self.session().await {
            Ok(session) => session,
            Err(what) => return all_failed(records.len(), &self.failed(&what)),
        };
        let answers = futures::future::join_all(
            records
                .chunks(self.batch)
                .map(|chunk| self.call(&session, chunk)),
        )
        .await;
        let mut outcomes = Vec::with_capacity(records.len());
        let mut answered = false;
        for (chunk, answer) in records.chunks_mut(self.batch).zip(answers) {
            match answer.and_then(|results| self.apply(chunk, results)) {
                Ok(done) => {
                    answered = true;
                    outcomes.extend(done);
                }
                Err(what) => {
                    self.failures.increment(1);
                    let error = self.failed(&format!("batch failed: {what}"));
                    // Reset: a late answer must never be taken for another
                    // batch's, and a plug-in in a bad state starts afresh.
                    session.close(what);
                    outcomes.extend(all_failed(chunk.len(), &error));
                }
            }
        }
        if answered {
            self.link.lock().await.backoff.reset();
        }
        outcomes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parsers::ParserSpec;

    fn config(spec: &str) -> Result<Config, String> {
        let spec = ParserSpec::from_spec(spec)?;
        spec.config
            .as_any()
            .downcast_ref::<Config>()
            .cloned()
            .ok_or_else(|| format!("not a remote config: {spec:?}"))
    }

    #[test]
    fn a_bare_endpoint_takes_the_defaults() {
        let spec =
            ParserSpec::from_spec(r#"{"type":"remote","endpoint":"http://127.0.0.1:50070"}"#)
                .unwrap();
        assert_eq!(spec.group, "remote");
        let config = config(r#"{"type":"remote","endpoint":"http://127.0.0.1:50070"}"#).unwrap();
        assert_eq!(
            config,
            Config {
                endpoint: "http://127.0.0.1:50070".into(),
                window: 4,
                timeout: Duration::from_secs(10),
                kinds: vec![],
                batch: 500,
            }
        );
        let spec = ParserSpec::from_spec(
            r#"{"type":"remote","endpoint":"http://plugins.local:9000/","group":"orders"}"#,
        )
        .unwrap();
        assert_eq!(spec.group, "orders");
    }

    #[test]
    fn options_are_read_by_name_and_duration() {
        let options = config(
            r#"{"type":"remote","endpoint":"http://[::1]:7","window":64,"timeout":"1.5s","kinds":["text","json"],"batch":1}"#,
        )
        .unwrap();
        assert_eq!(
            (
                options.window,
                options.timeout,
                options.kinds,
                options.batch
            ),
            (
                64,
                Duration::from_millis(1500),
                vec![RecordKind::Text, RecordKind::Json],
                1
            )
        );
        for (timeout, want) in [("250", 250), (r#""250ms""#, 250), (r#""1m""#, 60_000)] {
            let config = config(&format!(
                r#"{{"type":"remote","endpoint":"http://h:1","timeout":{timeout}}}"#
            ))
            .unwrap();
            assert_eq!(config.timeout, Duration::from_millis(want), "{timeout}");
        }
    }

    #[test]
    fn bad_options_are_refused_with_a_reason() {
        let cases = [
            (r#""endpoint":"127.0.0.1:50070""#, "endpoint"),
            (r#""endpoint":"https://h:1""#, "scheme must be http"),
            (r#""endpoint":"http://h""#, "no port"),
            (r#""endpoint":"http://h:1/parse""#, "path"),
            (r#""endpoint":"http://h:1?x=1""#, "query"),
            (r#""endpoint":"http://u@h:1""#, "user information"),
            (r#""endpoint":"""#, "endpoint"),
            (r#""endpoint":"http://h:1","window":0"#, "window"),
            (r#""endpoint":"http://h:1","window":65"#, "window"),
            (r#""endpoint":"http://h:1","batch":0"#, "batch"),
            (r#""endpoint":"http://h:1","timeout":0"#, "timeout"),
            (r#""endpoint":"http://h:1","timeout":"soon""#, "timeout"),
            (r#""endpoint":"http://h:1","timeout":-1"#, "timeout"),
            (r#""endpoint":"http://h:1","timeout":true"#, "timeout"),
            (
                r#""endpoint":"http://h:1","kinds":["words"]"#,
                "known kinds: random_number",
            ),
            (r#""endpoint":"http://h:1","speed":3"#, "speed"),
            (r#""window":4"#, "endpoint"),
        ];
        for (options, why) in cases {
            let err = config(&format!(r#"{{"type":"remote",{options}}}"#)).unwrap_err();
            assert!(err.contains(why), "{options}: {err}");
        }
    }

    fn remote() -> Remote {
        config(r#"{"type":"remote","endpoint":"http://127.0.0.1:9"}"#)
            .unwrap()
            .build()
    }

    fn texts(n: usize) -> Vec<Record> {
        (0..n)
            .map(|i| Record {
                seq: i as u64,
                payload: Some(Payload::Text(Text {
                    body: format!("r{i}"),
                })),
                ..Default::default()
            })
            .collect()
    }

    fn result(answer: Answer) -> ProcessResult {
        ProcessResult {
            outcome: Some(answer),
        }
    }

    #[test]
    fn answers_become_payloads_drops_and_prefixed_errors() {
        let object: pbjson_types::Struct = serde_json::from_str(r#"{"a":[1,null]}"#).unwrap();
        let mut records = texts(5);
        let outcomes = remote()
            .apply(
                &mut records,
                vec![
                    result(Answer::Json(object.clone())),
                    result(Answer::Text("T".into())),
                    result(Answer::Keep(Default::default())),
                    result(Answer::Drop(Default::default())),
                    result(Answer::Error("bad".into())),
                ],
            )
            .unwrap();
        assert_eq!(
            outcomes,
            vec![
                Ok(Disposition::Store(None)),
                Ok(Disposition::Store(None)),
                Ok(Disposition::Store(None)),
                Ok(Disposition::Drop),
                Err("plug-in http://127.0.0.1:9: bad".into()),
            ]
        );
        let payloads: Vec<_> = records.into_iter().map(|r| r.payload).collect();
        let text = |body: &str| {
            Some(Payload::Text(Text {
                body: body.to_owned(),
            }))
        };
        assert_eq!(
            payloads,
            [
                Some(Payload::Json(object)),
                text("T"),
                text("r2"),
                text("r3"),
                text("r4")
            ]
        );
    }

    /// A malformed answer fails the whole batch and changes no record.
    #[test]
    fn malformed_answers_fail_the_batch_and_leave_records_as_delivered() {
        let nan = pbjson_types::Struct {
            fields: [(
                "x".to_owned(),
                pbjson_types::Value {
                    kind: Some(pbjson_types::value::Kind::NumberValue(f64::NAN)),
                },
            )]
            .into(),
        };
        let cases = [
            (
                vec![result(Answer::Text("T".into()))],
                "answered 1 results for 2 records",
            ),
            (
                vec![result(Answer::Text("T".into())), result(Answer::Json(nan))],
                "result 1 is not a JSON payload a record may carry: JSON field x is NaN or infinite",
            ),
            (
                vec![
                    result(Answer::Text("T".into())),
                    ProcessResult { outcome: None },
                ],
                "result 1 has no outcome",
            ),
            (
                vec![
                    result(Answer::Text("T".into())),
                    result(Answer::Text("a\0".into())),
                ],
                "result 1 is a text holding a NUL",
            ),
        ];
        for (results, want) in cases {
            let mut records = texts(2);
            let err = remote().apply(&mut records, results).unwrap_err();
            assert!(err.contains(want), "{err}");
            assert_eq!(records, texts(2));
        }
    }

    /// Nothing listens: the records fail with the reason, after the
    /// timeout rather than at once, and the failure is counted.
    #[tokio::test(start_paused = true)]
    async fn without_a_plug_in_every_record_fails_and_says_why() {
        let port = tributary::testkit::free_port();
        let remote = Config {
            endpoint: format!("http://127.0.0.1:{port}"),
            window: 1,
            timeout: Duration::from_millis(500),
            kinds: vec![],
            batch: 2,
        }
        .build();
        let mut records = vec![Record::default(); 3];
        let started = Instant::now();
        let outcomes = remote.process_batch(&mut records).await;
        assert!(started.elapsed() >= Duration::from_millis(500));
        assert_eq!(outcomes.len(), 3);
        for outcome in outcomes {
            let err = outcome.unwrap_err();
            assert!(
                err.starts_with(&format!(
                    "plug-in http://127.0.0.1:{port}: not connected (cannot connect"
                )),
                "{err}"
            );
        }
        assert_eq!(records, vec![Record::default(); 3]);
    }
}
