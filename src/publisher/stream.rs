//! The publish streams of one publisher: one session per stream, and the
//! loop that reconnects after the back-off until every record is answered.

use std::{sync::atomic::Ordering, time::Duration};

use tokio::{sync::mpsc, time::Instant};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

use super::{PublishError, Settings, Totals, backoff, outbox::Outbox};
use crate::{
    bearer::AttachBearer,
    call_failure, grpc_client,
    log_throttle::{DEFAULT_INTERVAL, Throttle},
    proto::{PublishRequest, Record, ingest_client::IngestClient},
};

/// Where a publisher's streams go.
pub(super) struct Target {
    pub(super) endpoint: Endpoint,
    pub(super) bearer: AttachBearer,
}

/// How long an outage is only noted at debug level before it is warned of.
const QUIET_OUTAGE: Duration = Duration::from_secs(2);

/// Why a publish stream broke. The publisher reconnects unless the cause
/// is lasting.
#[derive(Debug, thiserror::Error)]
enum Broken {
    #[error("connecting")]
    Connect(#[source] tonic::transport::Error),
    #[error("opening the publish stream")]
    Open(#[source] tonic::Status),
    #[error("publish stream failed")]
    Stream(#[source] tonic::Status),
    #[error("the server ended the publish stream")]
    Ended,
    #[error("the publish stream closed")]
    Closed,
}

/// `error` and its causes, outermost first: a transport error's own text
/// says only "transport error", its cause says why.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        next = cause.source();
    }
    text
}

/// How a publish stream ended without breaking.
enum Ended {
    /// The producer is done and everything was answered.
    Done,
    /// The stream reached its age limit with nothing outstanding.
    RolledOver,
    /// Records were refused as unavailable, and none accepted, for longer
    /// than the retry time.
    Refused,
}

/// Publishes what `input` brings until it closes and everything is
/// answered.
pub(super) async fn run(
    settings: Settings,
    target: Target,
    mut input: mpsc::Receiver<Record>,
    totals: std::sync::Arc<Totals>,
    shutdown: CancellationToken,
) -> Result<(), PublishError> {
    let mut outbox = Outbox::default();
    let mut failing_since: Option<Instant> = None;
    let mut reconnect = backoff();
    let url = target.endpoint.uri().to_string();
    let url = url.trim_end_matches('/');
    let retry_secs = settings.retry_for.as_secs();
    loop {
        let answered = totals.answered();
        match session(&settings, &target, &mut input, &mut outbox, &totals).await {
            Ok(Ended::Done) => return Ok(()),
            Ok(Ended::RolledOver) => {
                totals.rollovers.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Ended::Refused) => {
                return Err(PublishError::Refused {
                    secs: retry_secs,
                    unacked: outbox.unacked_records,
                });
            }
            Err(e) => {
                if totals.answered() > answered {
                    // The stream made progress before failing: a new outage.
                    failing_since = None;
                    reconnect.reset();
                }
                if let Some(hint) = call_failure::lasting_cause(&e) {
                    return Err(PublishError::Lasting {
                        url: url.to_owned(),
                        hint,
                        cause: chain(&e),
                    });
                }
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() > settings.retry_for {
                    return Err(PublishError::Unreachable {
                        url: url.to_owned(),
                        secs: retry_secs,
                        cause: chain(&e),
                    });
                }
                let error = chain(&e);
                totals.reconnects.fetch_add(1, Ordering::Relaxed);
                // A stream the server ends because the process is stopping
                // is no outage; otherwise once per interval, not once per
                // attempt, so an outage does not flood the log.
                // The first failures of an outage are only noted: a stream
                // that comes back within QUIET_OUTAGE needs nobody's action,
                // and the next attempts may yet show a cause that waiting
                // cannot heal (a TLS listener answers a plaintext client with
                // a broken pipe as often as with a telling protocol error).
                static FAILED: Throttle = Throttle::new(DEFAULT_INTERVAL);
                if shutdown.is_cancelled() {
                    tracing::debug!(connect = %url, error = %error, "publish stream ended while stopping");
                } else if reconnect.failures() == 0 || since.elapsed() < QUIET_OUTAGE {
                    tracing::debug!(connect = %url, error = %error, "publish stream failed; reconnecting");
                } else if let Some(repeats) = FAILED.admit() {
                    tracing::warn!(connect = %url, error = %error, unacked = outbox.unacked_records, retrying_for = ?since.elapsed(), repeats, "publish stream failed; reconnecting");
                }
                outbox.resend_all();
                let pause = reconnect.next_wait();
                tokio::select! {
                    () = shutdown.cancelled() => {
                        return Err(PublishError::Stopped { unacked: outbox.unacked_records });
                    }
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

async fn session(
    settings: &Settings,
    target: &Target,
    input: &mut mpsc::Receiver<Record>,
    outbox: &mut Outbox,
    totals: &Totals,
) -> Result<Ended, Broken> {
    let roll_at = settings.rollover.map(|age| Instant::now() + age);
    let channel = grpc_client::connect_with_bearer(&target.endpoint, target.bearer.clone())
        .await
        .map_err(Broken::Connect)?;
    let mut client = IngestClient::new(channel);
    let (tx, rx) = mpsc::channel::<PublishRequest>(8);
    let mut responses = client
        .publish(ReceiverStream::new(rx))
        .await
        .map_err(Broken::Open)?
        .into_inner();
    loop {
        // Past its age, the stream takes no new records; once what it
        // carries is answered, it ends and the caller opens a new one.
        let rolling = roll_at.is_some_and(|at| Instant::now() >= at);
        if outbox.is_empty() {
            if outbox.input_closed {
                return Ok(Ended::Done);
            }
            if rolling {
                return Ok(Ended::RolledOver);
            }
        }
        // From a refusal until something is accepted again, new records
        // wait: they would only be refused as well, and the held records
        // alone probe whether the mesh is back.
        let may_take = !outbox.input_closed
            && !rolling
            && outbox.refused_since.is_none()
            && outbox.unacked_records + settings.batch <= settings.window;
        tokio::select! {
            // Wakes an idle stream when it comes of age.
            () = async {
                match roll_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            }, if !rolling => {}
            // Refused records go again once their back-off is over.
            () = async {
                match outbox.retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => outbox.release_held(),
            // Republished batches go first and need no new records.
            permit = tx.reserve(), if outbox.has_resend() => {
                let permit = permit.map_err(|_| Broken::Closed)?;
                if let Some(request) = outbox.next_resend() {
                    permit.send(request);
                }
            }
            // Only while the request channel has room, so that the send
            // below never waits and answers keep being read.
            first = input.recv(), if may_take && !outbox.has_resend() && tx.capacity() > 0 => {
                let Some(first) = first else {
                    outbox.input_closed = true;
                    continue;
                };
                // Whatever else is ready goes in the same batch; nothing
                // waits for company, so a lone record leaves at once.
                let mut records = vec![first];
                while records.len() < settings.batch {
                    match input.try_recv() {
                        Ok(record) => records.push(record),
                        Err(_) => break,
                    }
                }
                totals.sent.fetch_add(records.len() as u64, Ordering::Relaxed);
                let request = outbox.add(records);
                tx.try_send(request).map_err(|_| Broken::Closed)?;
            }
            response = responses.message() => {
                let response = response.map_err(Broken::Stream)?.ok_or(Broken::Ended)?;
                outbox.settle(response, totals, settings.batch);
                if outbox
                    .refused_since
                    .is_some_and(|since| since.elapsed() > settings.retry_for)
                {
                    return Ok(Ended::Refused);
                }
            }
        }
    }
}
