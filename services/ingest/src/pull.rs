//! StreamingPull: one stream carries deliveries to a parser and its acks,
//! nacks and deadline extensions back.
//!
//! Two tasks serve a stream. The fetcher takes messages from the queue while
//! the subscriber's credit (`max_outstanding` records) allows and sends them.
//! The reader applies what the parser sends. Acks go to the queue by id, so a
//! parser may ack through any server, not only the one that delivered.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use futures::Stream;
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::{Status, Streaming};
use tributary::{
    clock, grpc,
    kind::{self, KindSet},
    metrics,
    proto::{AckRefusal, PullRequest, PullResponse, RecordKind},
    queue::{self, Queue, QueueError, SubscribeOptions, Subscription},
    trace_context,
    wire::Delivery,
};

use crate::{IngestService, Limits};

type ResponseStream = Pin<Box<dyn Stream<Item = Result<PullResponse, Status>> + Send>>;

/// Longest ack id echoed back in a refusal.
const SHOWN_ACK_ID_CHARS: usize = 200;

/// What this stream has delivered and not yet seen acked or nacked.
#[derive(Default)]
struct Credit {
    held: HashMap<String, u32>,
    records: u64,
}

impl Credit {
    /// Counts a delivery once, however often the same message is delivered
    /// to this stream again.
    fn hold(&mut self, ack_id: String, records: u32) {
        if let Some(before) = self.held.insert(ack_id, records) {
            self.records -= u64::from(before);
        }
        self.records += u64::from(records);
    }
}

struct Shared {
    credit: Mutex<Credit>,
    freed: Notify,
}

impl Shared {
    fn credit(&self) -> MutexGuard<'_, Credit> {
        self.credit
            .lock()
            .expect("credit lock is never poisoned: no panics under it")
    }

    fn release(&self, ack_id: &str) {
        let mut credit = self.credit();
        if let Some(records) = credit.held.remove(ack_id) {
            credit.records -= u64::from(records);
            drop(credit);
            self.freed.notify_one();
        }
    }
}

/// A subscription as the server takes it: the first `PullRequest`'s
/// `subscribe`, checked and held to the server's limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribed {
    /// The consumer group, as [`queue::check_group`] takes it.
    pub group: String,
    /// The kinds asked for, each a known kind; empty means every kind.
    pub kinds: Vec<RecordKind>,
    /// Records the stream may hold unacked: the caller's ask, or the
    /// server's default for 0, never above `--max-outstanding-cap`.
    pub max_outstanding: u32,
    /// How long a delivery stays with the stream unacked: at least 100 ms.
    pub ack_deadline: Duration,
}

/// Checks the first message of a Pull stream. Everything a caller may send
/// gets an answer: INVALID_ARGUMENT naming what is wrong, or a subscription
/// within `limits` (a fuzz target: `fuzz/fuzz_targets/pull_request.rs`).
pub fn subscription(first: &PullRequest, limits: &Limits) -> Result<Subscribed, Status> {
    let subscription = first
        .subscribe
        .as_ref()
        .ok_or_else(|| Status::invalid_argument("the first PullRequest must carry `subscribe`"))?;
    queue::check_group(&subscription.parser)
        .map_err(|e| Status::invalid_argument(format!("subscribe.parser: {e}")))?;
    let mut kinds = Vec::with_capacity(subscription.kinds.len().min(16));
    for raw in &subscription.kinds {
        match RecordKind::try_from(*raw) {
            Ok(RecordKind::Unspecified) | Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "subscribe.kinds holds {raw}, which is not a record kind"
                )));
            }
            Ok(kind) => kinds.push(kind),
        }
    }
    let max_outstanding = match subscription.max_outstanding {
        0 => limits.max_outstanding,
        n => n,
    }
    .min(limits.max_outstanding_cap);
    let ack_deadline = match subscription.ack_deadline_ms {
        0 => limits.ack_deadline(),
        ms => Duration::from_millis(u64::from(ms.max(100))),
    };
    Ok(Subscribed {
        group: subscription.parser.clone(),
        kinds,
        max_outstanding,
        ack_deadline,
    })
}

/// Opens a Pull stream: reads the subscription, joins the consumer group and
/// starts delivering.
pub async fn stream(
    service: IngestService,
    mut inbound: Streaming<PullRequest>,
) -> Result<ResponseStream, Status> {
    let first = inbound
        .message()
        .await
        .map_err(grpc::inbound_status)?
        .ok_or_else(|| Status::invalid_argument("the Pull stream ended before subscribing"))?;
    let subscription = subscription(&first, &service.limits)?;
    let queue_sub = service
        .queue
        .subscribe(SubscribeOptions {
            group: subscription.group.clone(),
            kinds: KindSet::of(subscription.kinds.iter().copied()),
            ack_deadline: subscription.ack_deadline,
        })
        .await?;
    let max_outstanding = subscription.max_outstanding;
    tracing::info!(parser = %subscription.group, max_outstanding, "parser subscribed");

    let shared = Arc::new(Shared {
        credit: Mutex::new(Credit::default()),
        freed: Notify::new(),
    });
    let group = subscription.group.clone();
    let (tx, rx) = mpsc::channel(4);
    let refusals = apply(&service.queue, &group, &shared, first).await;
    if !refusals.is_empty() {
        let _ = tx.try_send(Ok(PullResponse {
            deliveries: Vec::new(),
            refusals,
        }));
    }
    let fetcher = tokio::spawn(fetch(
        subscription.group.clone(),
        queue_sub,
        shared.clone(),
        tx.clone(),
        u64::from(max_outstanding),
        service.limits.max_attempts,
    ));
    let watching = CancellationToken::new();
    tokio::spawn(watch_lag(
        service.queue.clone(),
        subscription.group.clone(),
        watching.clone(),
    ));
    tokio::spawn(read(
        service,
        group,
        inbound,
        shared,
        Stream_ { fetcher, tx },
        watching.drop_guard(),
    ));
    Ok(Box::pin(ReceiverStream::new(rx)))
}

/// Takes messages from the queue while credit allows and sends them.
async fn fetch(
    group: String,
    mut subscription: Box<dyn Subscription>,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Result<PullResponse, Status>>,
    max_outstanding: u64,
    max_attempts: u32,
) {
    let deliveries = metrics::counter!(metrics::QUEUE_DELIVERIES, "group" => group.clone());
    let redeliveries = metrics::counter!(metrics::QUEUE_REDELIVERIES, "group" => group.clone());
    loop {
        loop {
            let freed = shared.freed.notified();
            {
                let credit = shared.credit();
                // One delivery is always allowed, however large.
                if credit.held.is_empty() || credit.records < max_outstanding {
                    break;
                }
            }
            freed.await;
        }
        let message = match subscription.next().await {
            Ok(message) => message,
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        };
        shared
            .credit()
            .hold(message.ack_id.clone(), message.records.len() as u32);
        deliveries.increment(1);
        if message.attempt > 1 {
            redeliveries.increment(1);
        }
        // The queue's hand-over to a parser, in the batch's own trace.
        let span = tracing::info_span!(
            parent: None,
            "queue deliver",
            otel.kind = "producer",
            group = %group,
            kind = kind::name(message.kind),
            records = message.records.len(),
            attempt = message.attempt,
        );
        trace_context::set_parent(&span, message.traceparent.as_deref());
        let traceparent = trace_context::traceparent(&span).or(message.traceparent);
        let delivery = Delivery {
            ack_id: message.ack_id,
            records: message.records,
            attempt: message.attempt,
            max_attempts,
            received_at: Some(clock::from_micros(message.received_at)),
            kind: message.kind as i32,
            traceparent: traceparent.unwrap_or_default(),
        };
        let response = PullResponse {
            deliveries: vec![delivery],
            refusals: Vec::new(),
        };
        if tx.send(Ok(response)).await.is_err() {
            return;
        }
    }
}

/// How often a pull stream reports its group's lag: often enough for a
/// dashboard, rarely enough that asking the queue costs nothing.
const LAG_EVERY: Duration = Duration::from_secs(5);

/// Keeps `tributary_queue_lag_messages{group}` current while the group has
/// a pull stream here.
async fn watch_lag(queue: Arc<dyn Queue>, group: String, done: CancellationToken) {
    let gauge = metrics::gauge!(metrics::QUEUE_LAG, "group" => group.clone());
    let mut every = tokio::time::interval(LAG_EVERY);
    loop {
        tokio::select! {
            () = done.cancelled() => return,
            _ = every.tick() => match queue.lag(&group).await {
                Ok(lag) => gauge.set(lag as f64),
                Err(e) => tracing::debug!(error = %e, %group, "could not read the queue lag"),
            },
        }
    }
}

/// The sending side of a Pull stream: the fetcher, and the reader's own
/// handle for refusals. The response stream ends when both are gone.
struct Stream_ {
    fetcher: tokio::task::JoinHandle<()>,
    tx: mpsc::Sender<Result<PullResponse, Status>>,
}

/// Applies what the parser sends until it hangs up or the server shuts down,
/// then hands back at once whatever it still held.
async fn read(
    service: IngestService,
    group: String,
    mut inbound: Streaming<PullRequest>,
    shared: Arc<Shared>,
    sending: Stream_,
    _lag_watch: DropGuard,
) {
    let Stream_ { fetcher, tx } = sending;
    let mut sending = Some((fetcher, tx));
    loop {
        tokio::select! {
            () = service.shutdown.cancelled(), if sending.is_some() => {
                // Stop delivering and end the response stream; keep taking
                // acks for what the parser is finishing.
                if let Some((fetcher, _tx)) = sending.take() {
                    fetcher.abort();
                }
            }
            message = inbound.message() => match message {
                Ok(Some(request)) => {
                    let refusals = apply(&service.queue, &group, &shared, request).await;
                    if let Some((_, tx)) = &sending
                        && !refusals.is_empty()
                    {
                        let response = PullResponse { deliveries: Vec::new(), refusals };
                        if tx.send(Ok(response)).await.is_err() {
                            break;
                        }
                    }
                }
                Ok(None) => break,
                Err(status) => {
                    tracing::debug!(%status, "pull stream broke");
                    break;
                }
            },
        }
    }
    if let Some((fetcher, _tx)) = sending {
        fetcher.abort();
        // Wait until the fetcher (and its subscription) is gone, so that
        // the queue sees the subscriber leave before the hand-backs below.
        let _ = fetcher.await;
    }
    let held: Vec<String> = shared.credit().held.drain().map(|(id, _)| id).collect();
    for ack_id in held {
        if let Err(e) = service.queue.abandon(&group, &ack_id).await {
            tracing::debug!(error = %e, "could not hand back a delivery; its deadline will");
        }
    }
}

/// Applies a request's acks, nacks and extensions for `group`; returns
/// those the queue refused.
async fn apply(
    queue: &Arc<dyn Queue>,
    group: &str,
    shared: &Shared,
    request: PullRequest,
) -> Vec<AckRefusal> {
    let mut refusals = Vec::new();
    for ack_id in request.ack_ids {
        match queue.ack(group, &ack_id).await {
            Ok(()) => shared.release(&ack_id),
            Err(e) => refuse(&mut refusals, ack_id, e),
        }
    }
    for nack in request.nacks {
        match queue.nack(group, &nack.ack_id, &nack.error).await {
            Ok(()) => shared.release(&nack.ack_id),
            Err(e) => refuse(&mut refusals, nack.ack_id, e),
        }
    }
    for ack_id in request.extend_ack_ids {
        if let Err(e) = queue.extend(group, &ack_id).await {
            refuse(&mut refusals, ack_id, e);
        }
    }
    refusals
}

/// Records a refused ack id; a queue that could not answer (it is closing,
/// or its backend is down) is noted, not blamed on the id: the delivery's
/// deadline or a restart redelivers it.
fn refuse(refusals: &mut Vec<AckRefusal>, ack_id: String, error: QueueError) {
    let (code, reason) = match error {
        QueueError::Invalid(reason) => (tonic::Code::InvalidArgument, reason),
        QueueError::Denied(reason) => (tonic::Code::PermissionDenied, reason),
        other => {
            tracing::debug!(error = %other, "ack, nack or extend not applied; the deadline will redeliver");
            return;
        }
    };
    metrics::counter!(metrics::QUEUE_ACKS_REFUSED, "code" => crate::publish::code_label(code as i32))
        .increment(1);
    refusals.push(AckRefusal {
        ack_id: ack_id.chars().take(SHOWN_ACK_ID_CHARS).collect(),
        code: code as i32,
        reason,
    });
}
