//! One streaming connection to a worker: `GET /rnd?n=N` over a single
//! HTTP/1.1 connection, parsed line by line as the chunks arrive.
//!
//! hyper's connection-level client is used rather than a pooled client
//! (reqwest, hyper-util's legacy client) because the supervisor must hold
//! exactly one connection per worker, and a pool decides on its own when to
//! open another.

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::line::{Item, LineParser};

/// Why a stream ended early.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The worker answered 503: it is serving another connection.
    #[error("the worker is busy with another connection")]
    Busy,
    /// The worker answered with another status than 200.
    #[error("the worker answered {0}")]
    Status(StatusCode),
    /// No sample arrived for the stall timeout: neither the response
    /// headers nor, later, a well-formed line. Bytes that make no sample (a
    /// line dribbled a byte at a time, an endless line, junk) do not count.
    #[error("no sample received for {0:?}")]
    Stalled(Duration),
    /// The connection broke: reset, closed mid-body, or not HTTP.
    #[error("the connection broke: {0}")]
    Broken(#[source] hyper::Error),
}

/// How a stream that did not fail ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// The worker sent all it was asked for.
    Complete,
    /// The sink stopped taking items: enough samples were collected.
    Stopped,
}

/// Where parsed lines go. Returning `false` stops the stream.
pub trait Sink {
    /// Takes one item; `false` when no more are wanted.
    fn accept(&mut self, item: Item) -> impl Future<Output = bool> + Send;
}

/// Asks the worker behind `tcp` for `n` numbers and feeds each parsed line
/// to `sink` as it arrives. `stall` bounds the wait for the response and
/// for each sample: the timer restarts on a well-formed line only, so a
/// worker that keeps the connection busy without producing samples (one byte
/// a second, megabytes without a newline) is a stall, not a slow worker that
/// holds its slot forever.
pub async fn stream(
    tcp: TcpStream,
    addr: SocketAddr,
    n: u64,
    stall: Duration,
    sink: &mut impl Sink,
) -> Result<StreamEnd, StreamError> {
    let _ = tcp.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(StreamError::Broken)?;
    // The connection task ends when the response body is dropped or the
    // socket closes; aborting it on return closes the socket in every case.
    let driver = AbortOnDrop(tokio::spawn(connection));
    let request = Request::get(format!("/rnd?n={n}"))
        .header(header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .expect("the request is well-formed");
    let response = tokio::time::timeout(stall, sender.send_request(request))
        .await
        .map_err(|_| StreamError::Stalled(stall))?
        .map_err(StreamError::Broken)?;
    match response.status() {
        StatusCode::OK => {}
        StatusCode::SERVICE_UNAVAILABLE => return Err(StreamError::Busy),
        other => return Err(StreamError::Status(other)),
    }
    let mut body = response.into_body();
    let mut parser = LineParser::new();
    let mut items = Vec::new();
    let mut deadline = tokio::time::Instant::now() + stall;
    let result = loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => break Err(StreamError::Stalled(stall)),
            Ok(None) => {
                parser.finish(&mut items);
                break Ok(StreamEnd::Complete);
            }
            Ok(Some(Err(e))) => {
                parser.abort(&mut items);
                break Err(StreamError::Broken(e));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            parser.feed(&data, &mut items);
            for item in items.drain(..) {
                if matches!(item, Item::Sample(_)) {
                    deadline = tokio::time::Instant::now() + stall;
                }
                if !sink.accept(item).await {
                    return Ok(StreamEnd::Stopped);
                }
            }
        }
    };
    for item in items.drain(..) {
        if !sink.accept(item).await {
            return Ok(StreamEnd::Stopped);
        }
    }
    drop(driver);
    result
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use clap::Parser;
    use tokio::{io::AsyncWriteExt, net::TcpListener};
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::{
        line::JunkReason,
        worker::{self, Worker},
    };

    /// Collects everything; stops after `limit` samples.
    #[derive(Default)]
    struct Collect {
        items: Vec<Item>,
        limit: Option<usize>,
    }

    impl Sink for Collect {
        async fn accept(&mut self, item: Item) -> bool {
            self.items.push(item);
            let samples = self
                .items
                .iter()
                .filter(|i| matches!(i, Item::Sample(_)))
                .count();
            self.limit.is_none_or(|limit| samples < limit)
        }
    }

    /// Our worker on a free port, with `flags`.
    async fn worker(flags: &[&str]) -> (SocketAddr, CancellationToken) {
        let mut args = vec![
            "worker",
            "-workerId",
            "1",
            "-port",
            "0",
            "-interval",
            "10ms",
        ];
        args.extend_from_slice(flags);
        let args = args.into_iter().map(String::from);
        let config = worker::Config::try_parse_from(worker::go_style(
            args,
            &<worker::Config as clap::CommandFactory>::command(),
        ))
        .expect("the flags parse");
        let worker = Worker::build(config).await.expect("port 0 binds");
        let addr = worker.local_addr();
        let stop = CancellationToken::new();
        tokio::spawn(worker.run(stop.clone()));
        (addr, stop)
    }

    async fn run(addr: SocketAddr, n: u64, sink: &mut Collect) -> Result<StreamEnd, StreamError> {
        let tcp = TcpStream::connect(addr).await.expect("the server listens");
        stream(tcp, addr, n, Duration::from_millis(300), sink).await
    }

    #[tokio::test]
    async fn a_complete_stream_and_a_second_connection_refused_with_503() {
        let (addr, _stop) = worker(&["-chunking", "split"]).await;
        let held = TcpStream::connect(addr).await.unwrap();
        let served = tokio::spawn(async move {
            let mut sink = Collect::default();
            let result = stream(held, addr, 20, Duration::from_secs(5), &mut sink).await;
            (result, sink)
        });
        // The listen queue is first in, first out: the held connection is
        // accepted first, so this one finds the worker busy.
        let busy = run(addr, 1, &mut Collect::default()).await;
        assert!(matches!(busy, Err(StreamError::Busy)), "{busy:?}");
        let (result, held_sink) = served.await.unwrap();
        assert_eq!(result.unwrap(), StreamEnd::Complete);
        assert_eq!(held_sink.items.len(), 20);
        assert!(held_sink.items.iter().all(|i| matches!(i, Item::Sample(_))));

        // Free again once the worker has closed the finished connection.
        let mut again = Collect::default();
        let result = run_when_free(addr, 3, &mut again).await;
        assert_eq!(result.unwrap(), StreamEnd::Complete);
        assert_eq!(again.items.len(), 3);

        // A sink that has enough stops the stream early.
        let mut enough = Collect {
            limit: Some(2),
            ..Default::default()
        };
        let result = run_when_free(addr, 10, &mut enough).await;
        assert_eq!(result.unwrap(), StreamEnd::Stopped);
        assert_eq!(enough.items.len(), 2);
    }

    /// Streams `n` numbers, asking again while the worker still answers
    /// busy (it may not have seen the previous connection close yet), for
    /// up to 5 s.
    async fn run_when_free(
        addr: SocketAddr,
        n: u64,
        sink: &mut Collect,
    ) -> Result<StreamEnd, StreamError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            sink.items.clear();
            match run(addr, n, sink).await {
                Err(StreamError::Busy) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                result => return result,
            }
        }
    }

    #[tokio::test]
    async fn a_worker_that_answers_and_sends_nothing_is_a_stall() {
        let (addr, _stop) = worker(&["-muteProb", "1"]).await;
        let mut sink = Collect::default();
        let result = run(addr, 5, &mut sink).await;
        assert!(matches!(result, Err(StreamError::Stalled(_))), "{result:?}");
        assert!(sink.items.is_empty());
    }

    /// A worker that answers 200 and then sends `body` forever, one piece
    /// every 20 ms, never finishing a well-formed line.
    async fn dribbling(piece: &'static [u8]) -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 1024];
            let _ = tokio::io::AsyncReadExt::read(&mut socket, &mut request).await;
            socket
                .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                .await
                .unwrap();
            loop {
                let chunk = [format!("{:x}\r\n", piece.len()).as_bytes(), piece, b"\r\n"].concat();
                if socket.write_all(&chunk).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_worker_dribbling_bytes_without_samples_is_a_stall() {
        // One byte at a time, far more often than the 300 ms stall timeout,
        // of a line that never ends: bytes keep coming, samples never do.
        let mut sink = Collect::default();
        let result = run(dribbling(b"7").await, 5, &mut sink).await;
        assert!(matches!(result, Err(StreamError::Stalled(_))), "{result:?}");
        assert!(
            sink.items
                .iter()
                .all(|i| matches!(i, Item::Junk(j) if j.reason == JunkReason::TooLong)),
            "{:?}",
            sink.items
        );
        // Big pieces without a newline: one junk report, then a stall.
        let mut sink = Collect::default();
        let result = run(dribbling(&[b'x'; 16 << 10]).await, 5, &mut sink).await;
        assert!(matches!(result, Err(StreamError::Stalled(_))), "{result:?}");
        assert_eq!(sink.items.len(), 1, "{:?}", sink.items);
        // Junk lines only: no sample, so a stall too.
        let result = run(dribbling(b"hello\n").await, 5, &mut Collect::default()).await;
        assert!(matches!(result, Err(StreamError::Stalled(_))), "{result:?}");
    }

    #[tokio::test]
    async fn a_connection_cut_mid_line_is_broken_and_the_partial_line_is_not_counted() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 1024];
            let _ = tokio::io::AsyncReadExt::read(&mut socket, &mut request).await;
            socket
                .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nrnd=1\nrnd\r\n3\r\n=12\r\n")
                .await
                .unwrap();
            // Dropped without the last chunk: the body is cut after `rnd=12`.
        });
        let mut sink = Collect::default();
        let result = run(addr, 5, &mut sink).await;
        assert!(matches!(result, Err(StreamError::Broken(_))), "{result:?}");
        assert_eq!(sink.items.len(), 2, "{:?}", sink.items);
        assert_eq!(sink.items[0], Item::Sample(1));
        assert!(matches!(&sink.items[1], Item::Junk(j) if j.reason == JunkReason::CutOff));
    }

    #[tokio::test]
    async fn another_status_is_reported() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 1024];
            let _ = tokio::io::AsyncReadExt::read(&mut socket, &mut request).await;
            socket
                .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                .await
                .unwrap();
        });
        let result = run(addr, 5, &mut Collect::default()).await;
        assert!(
            matches!(result, Err(StreamError::Status(StatusCode::NOT_FOUND))),
            "{result:?}"
        );
    }
}
