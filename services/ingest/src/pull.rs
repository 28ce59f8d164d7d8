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
    proto::{Delivery, PullRequest, PullResponse, RecordKind},
    queue::{Queue, SubscribeOptions, Subscription},
    trace_context,
};

use crate::IngestService;

type ResponseStream = Pin<Box<dyn Stream<Item = Result<PullResponse, Status>> + Send>>;

/// What this stream has delivered and not yet seen acked or nacked.
#[derive(Default)]
struct Credit {
    held: HashMap<String, u32>,
    records: u64,
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
    let subscription = first
        .subscribe
        .clone()
        .ok_or_else(|| Status::invalid_argument("the first PullRequest must carry `subscribe`"))?;
    if subscription.parser.is_empty() {
        return Err(Status::invalid_argument("subscribe.parser is empty"));
    }
    let mut kinds = Vec::with_capacity(subscription.kinds.len());
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
    let limits = &service.limits;
    let max_outstanding = match subscription.max_outstanding {
        0 => limits.max_outstanding,
        n => n,
    };
    let deadline = match subscription.ack_deadline_ms {
        0 => limits.ack_deadline(),
        ms => Duration::from_millis(u64::from(ms.max(100))),
    };
    let queue_sub = service
        .queue
        .subscribe(SubscribeOptions {
            group: subscription.parser.clone(),
            kinds: KindSet::of(kinds),
            ack_deadline: deadline,
        })
        .await?;
    tracing::info!(parser = %subscription.parser, max_outstanding, "parser subscribed");

    let shared = Arc::new(Shared {
        credit: Mutex::new(Credit::default()),
        freed: Notify::new(),
    });
    apply(&service.queue, &shared, first).await;
    let (tx, rx) = mpsc::channel(4);
    let fetcher = tokio::spawn(fetch(
        subscription.parser.clone(),
        queue_sub,
        shared.clone(),
        tx,
        u64::from(max_outstanding),
        service.limits.max_attempts,
    ));
    let watching = CancellationToken::new();
    tokio::spawn(watch_lag(
        service.queue.clone(),
        subscription.parser.clone(),
        watching.clone(),
    ));
    tokio::spawn(read(
        service,
        inbound,
        shared,
        fetcher,
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
        {
            let mut credit = shared.credit();
            credit.records += message.records.len() as u64;
            credit
                .held
                .insert(message.ack_id.clone(), message.records.len() as u32);
        }
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

/// Applies what the parser sends until it hangs up or the server shuts down,
/// then hands back whatever it still held.
async fn read(
    service: IngestService,
    mut inbound: Streaming<PullRequest>,
    shared: Arc<Shared>,
    fetcher: tokio::task::JoinHandle<()>,
    _lag_watch: DropGuard,
) {
    let mut fetcher = Some(fetcher);
    loop {
        tokio::select! {
            () = service.shutdown.cancelled(), if fetcher.is_some() => {
                // Stop delivering and end the response stream; keep taking
                // acks for what the parser is finishing.
                if let Some(f) = fetcher.take() {
                    f.abort();
                }
            }
            message = inbound.message() => match message {
                Ok(Some(request)) => apply(&service.queue, &shared, request).await,
                Ok(None) => break,
                Err(status) => {
                    tracing::debug!(%status, "pull stream broke");
                    break;
                }
            },
        }
    }
    if let Some(f) = fetcher {
        f.abort();
    }
    let held: Vec<String> = shared.credit().held.drain().map(|(id, _)| id).collect();
    for ack_id in held {
        if let Err(e) = service
            .queue
            .nack(&ack_id, "the subscriber went away")
            .await
        {
            tracing::debug!(error = %e, "could not hand back a delivery; its deadline will");
        }
    }
}

async fn apply(queue: &Arc<dyn Queue>, shared: &Shared, request: PullRequest) {
    for ack_id in &request.ack_ids {
        if let Err(e) = queue.ack(ack_id).await {
            tracing::warn!(error = %e, %ack_id, "ack failed");
        }
        shared.release(ack_id);
    }
    for nack in &request.nacks {
        if let Err(e) = queue.nack(&nack.ack_id, &nack.error).await {
            tracing::warn!(error = %e, ack_id = %nack.ack_id, "nack failed");
        }
        shared.release(&nack.ack_id);
    }
    for ack_id in &request.extend_ack_ids {
        if let Err(e) = queue.extend(ack_id).await {
            tracing::warn!(error = %e, %ack_id, "extend failed");
        }
    }
}
