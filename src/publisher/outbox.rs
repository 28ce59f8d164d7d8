//! What a publisher owes the mesh across broken streams: the unanswered
//! batches with their spans, and how an answer settles a batch.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::atomic::Ordering,
};

use tokio::time::Instant;
use tonic::Code;
use tracing::Span;

use super::{Totals, backoff};
use crate::{
    backoff::Backoff,
    kind,
    log_throttle::{DEFAULT_INTERVAL, Throttle},
    proto::{PublishRequest, PublishResponse, Record},
    trace_context,
};

/// The state that outlives a broken stream.
pub(super) struct Outbox {
    /// Batches sent (or to send) and not yet answered, by batch id.
    unacked: BTreeMap<u64, Vec<Record>>,
    /// The span of each unanswered batch. It ends when the batch's records
    /// are all answered: a republished batch, and a batch of retried
    /// records, stay in the trace of the batch they first came in.
    spans: HashMap<u64, Span>,
    /// Batch ids to (re)send before new ones.
    resend: VecDeque<u64>,
    next_batch: u64,
    /// Records in `unacked`: what counts against the window.
    pub(super) unacked_records: usize,
    /// The producer has dropped its senders.
    pub(super) input_closed: bool,
    /// Batches of refused records waiting out their back-off.
    held: Vec<u64>,
    /// When the held batches go again.
    pub(super) retry_at: Option<Instant>,
    /// The back-off of refused records.
    refusals: Backoff,
    /// Since when records have been refused with none accepted.
    pub(super) refused_since: Option<Instant>,
}

impl Default for Outbox {
    fn default() -> Self {
        Self {
            unacked: BTreeMap::new(),
            spans: HashMap::new(),
            resend: VecDeque::new(),
            next_batch: 0,
            unacked_records: 0,
            input_closed: false,
            held: Vec::new(),
            retry_at: None,
            refusals: backoff(),
            refused_since: None,
        }
    }
}

impl Outbox {
    /// Nothing is left to answer.
    pub(super) fn is_empty(&self) -> bool {
        self.unacked.is_empty()
    }

    /// A republished batch is waiting to go.
    pub(super) fn has_resend(&self) -> bool {
        !self.resend.is_empty()
    }

    /// Takes new records as the next batch, the root of its own trace, and
    /// returns its request.
    pub(super) fn add(&mut self, records: Vec<Record>) -> PublishRequest {
        self.unacked_records += records.len();
        let batch_id = self.next_batch;
        self.next_batch += 1;
        self.spans.insert(batch_id, batch_span(&records));
        self.unacked.insert(batch_id, records);
        self.request(batch_id)
            .expect("the batch was inserted just above")
    }

    /// The request of the next batch to send again, if any.
    pub(super) fn next_resend(&mut self) -> Option<PublishRequest> {
        while let Some(batch_id) = self.resend.pop_front() {
            // A batch answered since it was queued to go again is done.
            if let Some(request) = self.request(batch_id) {
                return Some(request);
            }
        }
        None
    }

    /// After a broken stream: everything unanswered goes again, in order,
    /// held batches too (the new stream's answers tell whether the queue is
    /// back).
    pub(super) fn resend_all(&mut self) {
        self.resend = self.unacked.keys().copied().collect();
        self.held.clear();
        self.retry_at = None;
    }

    /// The back-off of held batches is over: they go again.
    pub(super) fn release_held(&mut self) {
        self.retry_at = None;
        let held = std::mem::take(&mut self.held);
        self.resend.extend(held);
    }

    fn request(&self, batch_id: u64) -> Option<PublishRequest> {
        let records = self.unacked.get(&batch_id)?.clone();
        let traceparent = self
            .spans
            .get(&batch_id)
            .and_then(trace_context::traceparent)
            .unwrap_or_default();
        Some(PublishRequest {
            batch_id,
            records,
            traceparent,
        })
    }

    /// Applies one batch's answer: acknowledged records are done, records
    /// the queue could not take go again in a held batch after a back-off,
    /// in the same trace; other rejections are final.
    pub(super) fn settle(&mut self, response: PublishResponse, totals: &Totals, batch: usize) {
        let Some(records) = self.unacked.remove(&response.batch_id) else {
            return;
        };
        self.unacked_records -= records.len();
        let span = self.spans.remove(&response.batch_id);
        if let Some(span) = &span {
            span.record("accepted", response.accepted + response.duplicates);
            span.record("rejected", response.rejections.len());
        }
        totals
            .accepted
            .fetch_add(u64::from(response.accepted), Ordering::Relaxed);
        totals
            .duplicates
            .fetch_add(u64::from(response.duplicates), Ordering::Relaxed);
        let mut retry = Vec::new();
        for rejection in &response.rejections {
            let record = records.get(rejection.index as usize);
            match (Code::from(rejection.code), record) {
                (Code::Unavailable, Some(record)) => retry.push(record.clone()),
                (code, _) => {
                    let rejected = totals.rejected.fetch_add(1, Ordering::Relaxed) + 1;
                    if rejected <= 5 {
                        tracing::warn!(seq = rejection.seq, ?code, reason = %rejection.reason, "record rejected");
                    }
                }
            }
        }
        if response.accepted + response.duplicates > 0 {
            self.refusals.reset();
            self.refused_since = None;
        }
        if retry.is_empty() {
            return;
        }
        self.hold(retry, span, totals, batch);
    }

    /// Holds refused records until the back-off says to send them again.
    fn hold(&mut self, retry: Vec<Record>, span: Option<Span>, totals: &Totals, batch: usize) {
        self.unacked_records += retry.len();
        totals
            .retried
            .fetch_add(retry.len() as u64, Ordering::Relaxed);
        // Refused records join the last held batch while it has room, so a
        // retry round sends few requests however the refusals came. That
        // batch carries one trace: the joining batch's trace ends here,
        // linked from it.
        let last = self.held.last().copied();
        match last.and_then(|id| self.unacked.get_mut(&id).map(|held| (id, held))) {
            Some((id, held)) if held.len() + retry.len() <= batch => {
                held.extend(retry);
                if let (Some(joined), Some(held_span)) = (span, self.spans.get(&id)) {
                    held_span.follows_from(&joined);
                }
            }
            _ => {
                let id = self.next_batch;
                self.next_batch += 1;
                self.unacked.insert(id, retry);
                // The retried records continue the trace of the batch they
                // came in: the span moves to the new batch.
                if let Some(span) = span {
                    self.spans.insert(id, span);
                }
                self.held.push(id);
            }
        }
        self.refused_since.get_or_insert_with(Instant::now);
        if self.retry_at.is_none() {
            let wait = self.refusals.next_wait();
            self.retry_at = Some(Instant::now() + wait);
            static REFUSED: Throttle = Throttle::new(DEFAULT_INTERVAL);
            if let Some(repeats) = REFUSED.admit() {
                tracing::warn!(
                    records = self.unacked_records,
                    retry_in_ms = wait.as_millis() as u64,
                    repeats,
                    "the mesh refused records as unavailable; retrying after a back-off"
                );
            }
        }
    }
}

/// The root of one batch's trace: the producer's publish.
fn batch_span(records: &[Record]) -> Span {
    let kind = records
        .first()
        .and_then(kind::of)
        .map_or("unknown", kind::name);
    tracing::info_span!(
        parent: None,
        "producer publish",
        otel.kind = "producer",
        records = records.len(),
        kind,
        accepted = tracing::field::Empty,
        rejected = tracing::field::Empty,
    )
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;
    use crate::proto::{Rejection, Text, record::Payload};

    fn text(seq: u64) -> Record {
        Record {
            source: "outbox".into(),
            seq,
            payload: Some(Payload::Text(Text {
                body: format!("line {seq}"),
            })),
            ..Default::default()
        }
    }

    fn refused(batch_id: u64, indexes: &[u32], accepted: u32) -> PublishResponse {
        PublishResponse {
            batch_id,
            accepted,
            rejections: indexes
                .iter()
                .map(|&index| Rejection {
                    index,
                    seq: u64::from(index),
                    code: Code::Unavailable as i32,
                    reason: "the queue is unavailable".into(),
                    ..Default::default()
                })
                .collect(),
            rejected: indexes.len() as u32,
            ..Default::default()
        }
    }

    /// The trace id of a `traceparent` (`00-<trace id>-<span id>-<flags>`).
    fn trace_id(traceparent: &str) -> &str {
        traceparent.split('-').nth(1).unwrap_or_default()
    }

    /// Runs `f` where spans belong to traces (an OpenTelemetry layer is
    /// installed), on paused time so that back-offs are instant to wait out.
    fn traced(f: impl FnOnce()) {
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, f);
    }

    #[test]
    fn retried_records_continue_their_batchs_trace() {
        traced(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            runtime.block_on(async {
                let totals = Totals::default();
                let mut outbox = Outbox::default();
                let first = outbox.add((0..4).map(text).collect());
                let other = outbox.add(vec![text(4)]);
                assert!(!first.traceparent.is_empty(), "a batch starts a trace");
                assert_ne!(
                    trace_id(&first.traceparent),
                    trace_id(&other.traceparent),
                    "each batch is its own trace"
                );

                // Two of the first batch's records are refused as
                // unavailable: they are held, then sent again.
                outbox.settle(refused(first.batch_id, &[1, 3], 2), &totals, 500);
                assert_eq!(outbox.unacked_records, 3);
                assert!(outbox.next_resend().is_none(), "held until the back-off");
                let at = outbox.retry_at.expect("a retry is scheduled");
                tokio::time::sleep_until(at).await;
                outbox.release_held();
                let retry = outbox.next_resend().expect("the held batch goes again");

                assert_ne!(retry.batch_id, first.batch_id);
                let seqs: Vec<u64> = retry.records.iter().map(|r| r.seq).collect();
                assert_eq!(seqs, [1, 3]);
                assert_eq!(
                    trace_id(&retry.traceparent),
                    trace_id(&first.traceparent),
                    "the retry continues the first batch's trace"
                );
                assert_eq!(totals.retried.load(Ordering::Relaxed), 2);

                // Answered at last, the retried records and the other batch
                // leave nothing behind.
                outbox.settle(refused(retry.batch_id, &[], 2), &totals, 500);
                outbox.settle(refused(other.batch_id, &[], 1), &totals, 500);
                assert!(outbox.is_empty());
                assert_eq!(outbox.unacked_records, 0);
                assert_eq!(totals.acked(), 5);
            });
        });
    }

    #[test]
    fn a_republished_batch_keeps_its_trace() {
        traced(|| {
            let mut outbox = Outbox::default();
            let sent = outbox.add(vec![text(0)]);
            outbox.resend_all();
            let again = outbox
                .next_resend()
                .expect("the unanswered batch goes again");
            assert_eq!(again.batch_id, sent.batch_id);
            assert!(!sent.traceparent.is_empty());
            assert_eq!(again.traceparent, sent.traceparent);
        });
    }

    #[test]
    fn final_rejections_are_counted_not_retried() {
        let totals = Totals::default();
        let mut outbox = Outbox::default();
        let sent = outbox.add(vec![text(0), text(1)]);
        let mut response = refused(sent.batch_id, &[0], 1);
        response.rejections[0].code = Code::InvalidArgument as i32;
        outbox.settle(response, &totals, 500);
        assert!(outbox.is_empty());
        assert!(outbox.retry_at.is_none());
        assert_eq!(totals.rejected.load(Ordering::Relaxed), 1);
        assert_eq!(totals.answered(), 2);
    }
}
