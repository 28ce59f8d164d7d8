//! `tributary-worker`: an HTTP worker that speaks the fleet protocol, with
//! faults that can be switched on to test a supervisor hard.
//!
//! The protocol: started as `worker -workerId 1 -port 3001`, it answers
//! `GET /rnd?n=N` with a chunked `200` carrying `Content-Type:
//! application/text`, `Cache-Control: no-cache` and `X-Worker-Id`, whose body
//! is N lines `rnd=<int>\n`, one per second (the first at once). It serves
//! one connection at a time: a second connection opened while one is being
//! served is answered `503 Service Unavailable` and closed, so that a client
//! learns at once why it is not served instead of waiting in a backlog.

use std::{
    convert::Infallible,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use bytes::Bytes;
use clap::{CommandFactory, Parser};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::{
    Method, Request, Response, StatusCode, body::Frame, header, server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use rand::RngExt;
use tokio::{net::TcpListener, sync::mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

/// The exit code of a crash that `-crashProb` asked for.
pub const CRASH_EXIT_CODE: i32 = 3;

/// A worker that streams random numbers over HTTP: `GET /rnd?n=N` answers N
/// lines `rnd=<int>`, one per interval, in a chunked body. One connection is
/// served at a time; another one is answered 503.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "tributary-worker",
    version,
    after_help = "Flags may be written Go-style with one dash (`-workerId 1 -port 3001`) \
                  or with two (`--workerId 1`), with a space or `=` before the value. \
                  Probabilities are per number, from 0 to 1."
)]
pub struct Config {
    /// Worker id, sent back in the `X-Worker-Id` header.
    #[arg(long = "workerId", env = "TRIBUTARY_WORKER_ID")]
    pub worker_id: String,
    /// TCP port to listen on.
    #[arg(long, env = "TRIBUTARY_WORKER_PORT")]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, env = "TRIBUTARY_WORKER_HOST", default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub host: IpAddr,
    /// Time between two numbers (Go duration: 1s, 250ms).
    #[arg(long, env = "TRIBUTARY_WORKER_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Numbers are drawn uniformly from 0 to this value, inclusive. Set it to
    /// 9223372036854775807 to exercise large numbers.
    #[arg(long, env = "TRIBUTARY_WORKER_MAX", default_value_t = 100, value_parser = clap::value_parser!(i64).range(0..))]
    pub max: i64,
    /// Probability that the process exits abruptly (exit code 3) instead of
    /// sending a number, leaving the connection cut mid-stream.
    #[arg(long = "crashProb", env = "TRIBUTARY_WORKER_CRASH_PROB", default_value_t = 0.0, value_parser = probability)]
    pub crash_prob: f64,
    /// Probability that the stream stalls before a number: the connection
    /// stays open and nothing is sent for `-stall`.
    #[arg(long = "stallProb", env = "TRIBUTARY_WORKER_STALL_PROB", default_value_t = 0.0, value_parser = probability)]
    pub stall_prob: f64,
    /// How long a stall lasts (Go duration).
    #[arg(long, env = "TRIBUTARY_WORKER_STALL", default_value = "1h", value_parser = humantime::parse_duration)]
    pub stall: Duration,
    /// Probability that a connection is answered 200 with its headers and
    /// then gets nothing at all (for `-stall`).
    #[arg(long = "muteProb", env = "TRIBUTARY_WORKER_MUTE_PROB", default_value_t = 0.0, value_parser = probability)]
    pub mute_prob: f64,
    /// Probability that a line is cut short. The cut falls inside `rnd=`, so
    /// a cut line never passes for a valid, smaller number.
    #[arg(long = "truncateProb", env = "TRIBUTARY_WORKER_TRUNCATE_PROB", default_value_t = 0.0, value_parser = probability)]
    pub truncate_prob: f64,
    /// Probability that a junk line is sent before a number.
    #[arg(long = "junkProb", env = "TRIBUTARY_WORKER_JUNK_PROB", default_value_t = 0.0, value_parser = probability)]
    pub junk_prob: f64,
    /// How lines map to HTTP chunks: `line` (one chunk per line), `split`
    /// (every line split across two or three chunks) or `merge` (lines sent
    /// `-mergeLines` at a time in one chunk).
    #[arg(long, env = "TRIBUTARY_WORKER_CHUNKING", value_enum, default_value_t = Chunking::Line)]
    pub chunking: Chunking,
    /// Exit when the process that started the worker goes away, so that a
    /// supervisor killed with SIGKILL leaves no worker behind.
    #[arg(long = "exitWithParent", env = "TRIBUTARY_WORKER_EXIT_WITH_PARENT", default_value_t = true, action = clap::ArgAction::Set)]
    pub exit_with_parent: bool,
    /// Lines per chunk with `-chunking merge`.
    #[arg(long = "mergeLines", env = "TRIBUTARY_WORKER_MERGE_LINES", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub merge_lines: u32,
}

/// How the lines of a body are cut into HTTP chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Chunking {
    /// One chunk per line.
    Line,
    /// Every line split across two or three chunks.
    Split,
    /// Several lines per chunk.
    Merge,
}

fn probability(text: &str) -> Result<f64, String> {
    let p: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("{p} is not a probability (0 to 1)"))
    }
}

impl Config {
    /// Parses the command line, Go-style single-dash long flags included.
    pub fn from_args(args: impl IntoIterator<Item = String>) -> Self {
        Self::parse_from(go_style(args, &Self::command()))
    }
}

/// Rewrites Go-style `-name` flags to `--name` for clap.
///
/// clap has no single-dash long flags, and the protocol fixes how a worker
/// is started (`-workerId 1 -port 3001`), so flags are normalised before
/// parsing. Only names the command knows are rewritten (and `-help`), so a
/// value such as `-5` is left alone.
pub fn go_style(args: impl IntoIterator<Item = String>, command: &clap::Command) -> Vec<String> {
    args.into_iter()
        .enumerate()
        .map(|(i, arg)| {
            if i == 0 || arg.starts_with("--") || !arg.starts_with('-') {
                return arg;
            }
            let name = arg[1..].split('=').next().unwrap_or_default();
            let known = name == "help"
                || command
                    .get_arguments()
                    .any(|a| a.get_long() == Some(name) && name.len() > 1);
            if known { format!("-{arg}") } else { arg }
        })
        .collect()
}

/// How often the worker checks that its parent is still there.
const PARENT_POLL: Duration = Duration::from_millis(250);

/// The environment variable through which a supervisor tells the workers
/// it starts its own pid ([`exit_with_parent`]).
pub const PARENT_PID_ENV: &str = "TRIBUTARY_WORKER_PARENT_PID";

/// Cancels `token` once the worker's parent process is gone: the kernel
/// then hands the worker to another parent (init or a subreaper), so the
/// parent pid changes. Polling is the portable way to see it without
/// `prctl(PR_SET_PDEATHSIG)`, which must be set between fork and exec.
///
/// The parent to watch is the one named by [`PARENT_PID_ENV`] when the
/// supervisor set it, else the parent at this call. A supervisor killed
/// while the worker was still starting is then seen as gone at the first
/// check, not taken for the parent.
pub fn exit_with_parent(token: CancellationToken) {
    let parent = std::env::var(PARENT_PID_ENV)
        .ok()
        .and_then(|pid| pid.parse().ok())
        .map(nix::unistd::Pid::from_raw)
        .unwrap_or_else(nix::unistd::getppid);
    tokio::spawn(async move {
        loop {
            if nix::unistd::getppid() != parent {
                tracing::warn!(
                    parent = parent.as_raw(),
                    "the parent process is gone; exiting"
                );
                token.cancel();
                return;
            }
            tokio::select! {
                () = token.cancelled() => return,
                () = tokio::time::sleep(PARENT_POLL) => {}
            }
        }
    });
}

/// A bound worker, ready to serve.
pub struct Worker {
    listener: TcpListener,
    config: Arc<Config>,
}

impl Worker {
    /// Binds the port.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let addr = SocketAddr::new(config.host, config.port);
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        Ok(Self {
            listener,
            config: Arc::new(config),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        tributary::grpc::bound_addr(&self.listener)
    }

    /// Serves until `shutdown` is cancelled; open streams end with it.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let busy = Arc::new(AtomicBool::new(false));
        loop {
            let (stream, _) = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Per-connection errors (a peer that reset before
                        // accept) must not end the worker.
                        tracing::debug!(error = %e, "accept failed");
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let io = TokioIo::new(stream);
            if busy.swap(true, Ordering::AcqRel) {
                tokio::spawn(async move {
                    let service = service_fn(|_req| async { Ok::<_, Infallible>(busy_response()) });
                    let _ = http1::Builder::new()
                        .keep_alive(false)
                        .serve_connection(io, service)
                        .await;
                });
                continue;
            }
            let guard = BusyGuard(busy.clone());
            let config = self.config.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                let _guard = guard;
                let service = service_fn(move |req| handle(req, config.clone()));
                // One stream per connection: closing it after the response
                // frees the worker for the next connection at once.
                tokio::select! {
                    _ = http1::Builder::new().keep_alive(false).serve_connection(io, service) => {}
                    () = stop.cancelled() => {}
                }
            });
        }
    }
}

/// Marks the worker free again when the served connection ends.
struct BusyGuard(Arc<AtomicBool>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/text")
        .body(Full::new(Bytes::from_static(body.as_bytes())).boxed())
        .expect("static headers are valid")
}

fn busy_response() -> Response<Body> {
    text(
        StatusCode::SERVICE_UNAVAILABLE,
        "busy: this worker serves one connection at a time\n",
    )
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    config: Arc<Config>,
) -> Result<Response<Body>, Infallible> {
    if req.uri().path() != "/rnd" {
        return Ok(text(
            StatusCode::NOT_FOUND,
            "not found: the only path is /rnd?n=N\n",
        ));
    }
    if req.method() != Method::GET {
        return Ok(text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET is allowed\n",
        ));
    }
    let n = req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|pair| pair.strip_prefix("n="))
            .and_then(|v| v.parse::<u64>().ok())
    });
    let Some(n) = n else {
        return Ok(text(
            StatusCode::BAD_REQUEST,
            "bad request: n must be a non-negative integer, as in /rnd?n=10\n",
        ));
    };
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(8);
    tokio::spawn(emit(n, config.clone(), tx));
    let response = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/text")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("X-Worker-Id", config.worker_id.as_str())
        .body(BodyExt::boxed(StreamBody::new(ReceiverStream::new(rx))));
    Ok(response.unwrap_or_else(|_| {
        text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the worker id is not a valid header value\n",
        )
    }))
}

/// Writes `n` numbers into the body, with the configured faults. Returns
/// early when the client goes away.
async fn emit(n: u64, config: Arc<Config>, tx: mpsc::Sender<Result<Frame<Bytes>, Infallible>>) {
    let send = |bytes: Vec<u8>| {
        let tx = tx.clone();
        async move { tx.send(Ok(Frame::data(Bytes::from(bytes)))).await.is_ok() }
    };
    if rand::rng().random_bool(config.mute_prob) {
        tokio::select! {
            () = tokio::time::sleep(config.stall) => {}
            () = tx.closed() => {}
        }
        return;
    }
    let mut merged = Vec::new();
    let mut merged_lines = 0;
    for i in 0..n {
        if i > 0 {
            tokio::time::sleep(config.interval).await;
        }
        let (crash, stall, junk, truncate, value, cut) = {
            let mut rng = rand::rng();
            (
                rng.random_bool(config.crash_prob),
                rng.random_bool(config.stall_prob),
                rng.random_bool(config.junk_prob),
                rng.random_bool(config.truncate_prob),
                rng.random_range(0..=config.max),
                rng.random_range(1..4usize),
            )
        };
        if crash {
            tracing::warn!(worker_id = %config.worker_id, "crashing, as -crashProb asked");
            std::process::exit(CRASH_EXIT_CODE);
        }
        if stall {
            tokio::select! {
                () = tokio::time::sleep(config.stall) => {}
                () = tx.closed() => return,
            }
        }
        let mut lines = Vec::new();
        if junk {
            lines.extend_from_slice(b"oops: not a number\n");
        }
        if truncate {
            lines.extend_from_slice(&b"rnd="[..cut]);
            lines.push(b'\n');
        }
        lines.extend_from_slice(format!("rnd={value}\n").as_bytes());
        let sent = match config.chunking {
            Chunking::Line => send(lines).await,
            Chunking::Split => {
                let mut ok = true;
                let parts = rand::rng().random_range(2..=3usize);
                let size = lines.len().div_ceil(parts);
                for part in lines.chunks(size) {
                    ok = ok && send(part.to_vec()).await;
                    // Gives the parts a chance to leave in separate reads.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                ok
            }
            Chunking::Merge => {
                merged.extend_from_slice(&lines);
                merged_lines += 1;
                if merged_lines == config.merge_lines || i + 1 == n {
                    merged_lines = 0;
                    send(std::mem::take(&mut merged)).await
                } else {
                    true
                }
            }
        };
        if !sent {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn go_style_flags_parse() {
        let config = Config::try_parse_from(go_style(
            args(&[
                "worker",
                "-workerId",
                "7",
                "-port=3001",
                "-crashProb",
                "0.5",
                "--chunking",
                "split",
            ]),
            &Config::command(),
        ))
        .expect("Go-style flags parse");
        assert_eq!(config.worker_id, "7");
        assert_eq!(config.port, 3001);
        assert_eq!(config.crash_prob, 0.5);
        assert_eq!(config.chunking, Chunking::Split);
    }

    #[test]
    fn unknown_flags_and_bad_probabilities_are_rejected() {
        let parse =
            |list: &[&str]| Config::try_parse_from(go_style(args(list), &Config::command()));
        assert!(parse(&["worker", "-workerId", "1", "-port", "1", "-bogus", "1"]).is_err());
        assert!(parse(&["worker", "-workerId", "1", "-port", "1", "-crashProb", "2"]).is_err());
        assert!(parse(&["worker", "-workerId", "1"]).is_err());
    }

    /// Durations are written as Go's `time.ParseDuration` writes them, as
    /// the protocol's workers expect.
    #[test]
    fn go_durations() {
        let parse = |text: &str| {
            Config::try_parse_from(go_style(
                args(&[
                    "worker",
                    "-workerId",
                    "1",
                    "-port",
                    "1",
                    &format!("-interval={text}"),
                ]),
                &Config::command(),
            ))
            .map(|config| config.interval)
            .map_err(|e| e.to_string())
        };
        assert_eq!(parse("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        for bad in ["", "1", "s", "1x", "-1s", "1..2s"] {
            assert!(parse(bad).is_err(), "{bad:?} must be rejected");
        }
        // The error names the flag and the units it takes.
        let error = parse("1x").unwrap_err();
        assert!(
            error.contains("--interval") && error.contains("ms"),
            "{error}"
        );
    }
}
