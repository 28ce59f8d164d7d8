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
    /// Nothing arrived for the stall timeout: neither the response headers
    /// nor, later, a byte of the body.
    #[error("nothing received for {0:?}")]
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
/// for each piece of the body.
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
    let result = loop {
        let frame = match tokio::time::timeout(stall, body.frame()).await {
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
