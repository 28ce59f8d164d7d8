//! The `tributary.v1.Query` handlers.

use std::{pin::Pin, sync::Arc, time::Duration};

use futures::Stream;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tributary::{
    clock,
    kind::KindSet,
    proto::{
        AggregateMetricRequest, AggregateMetricResponse, Dashboard, GetLatencyRequest,
        GetSmsProgressRequest, GetStatsRequest, Latency, ListAveragesRequest, ListAveragesResponse,
        ListDeadLettersRequest, ListDeadLettersResponse, ListRecordsRequest, ListRecordsResponse,
        RecordKind, SmsProgress, Stats, StoredRecord, TailRecordsRequest, WatchDashboardRequest,
        WatchStatsRequest, query_server::Query,
    },
    queue,
    ranges::{DEFAULT_POLL_MS, MAX_BACKLOG, MAX_POLL_MS, MAX_TAILS, MIN_POLL_MS},
    store::{
        DeadLetterFilter, RecordFilter, Store,
        tail::{self, TailFilter},
    },
    workloads::{
        averages::{self, AverageFilter},
        probes,
        sensors::{self, AggregateQuery},
        sms,
    },
};

use crate::{
    convert, dashboard,
    fleet::FleetSource,
    paging::{self, Bounds, DEFAULT_LIMIT, MAX_LIMIT},
};

pub use tributary::ranges::{DEFAULT_INTERVAL_MS, MAX_INTERVAL_MS, MIN_INTERVAL_MS};

/// A watch stream's interval: 0 means a second; out of bounds is refused.
pub fn interval(requested: u32) -> Result<Duration, Status> {
    let ms = match requested {
        0 => DEFAULT_INTERVAL_MS,
        ms @ MIN_INTERVAL_MS..=MAX_INTERVAL_MS => ms,
        ms => {
            return Err(Status::invalid_argument(format!(
                "interval_ms {ms} is outside {MIN_INTERVAL_MS}..={MAX_INTERVAL_MS}"
            )));
        }
    };
    Ok(Duration::from_millis(u64::from(ms)))
}

/// The Query service over one store. Cloning is cheap: a watch stream's
/// task holds its own clone and reads through the same handlers.
#[derive(Clone)]
pub struct QueryService {
    store: Arc<dyn Store>,
    fleet: FleetSource,
    shutdown: CancellationToken,
    /// One permit per tail being followed.
    tails: Arc<Semaphore>,
}

impl QueryService {
    /// A service reading `store`; watch streams end on `shutdown`.
    pub fn new(store: Arc<dyn Store>, shutdown: CancellationToken) -> Self {
        Self {
            store,
            fleet: FleetSource::none(),
            shutdown,
            tails: Arc::new(Semaphore::new(MAX_TAILS)),
        }
    }

    /// The dashboard reports the fleet status from `fleet`.
    pub fn with_fleet(mut self, fleet: FleetSource) -> Self {
        self.fleet = fleet;
        self
    }

    /// Where the fleet status comes from.
    pub fn fleet(&self) -> &FleetSource {
        &self.fleet
    }
}

fn limit(requested: u32) -> Result<u32, Status> {
    match requested {
        0 => Ok(DEFAULT_LIMIT),
        n if n > MAX_LIMIT => Err(Status::invalid_argument(format!(
            "limit {n} is above the maximum of {MAX_LIMIT}"
        ))),
        n => Ok(n),
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// A parser (consumer group) filter: none when empty, else a name
/// [`queue::check_group`] takes; no stored row has any other.
fn parser_filter(requested: String) -> Result<Option<String>, Status> {
    let Some(parser) = non_empty(requested) else {
        return Ok(None);
    };
    queue::check_group(&parser).map_err(|e| Status::invalid_argument(format!("parser: {e}")))?;
    Ok(Some(parser))
}

/// The consumer group asked for, or the parser type's default group.
fn group(requested: String, default: &str) -> Result<String, Status> {
    Ok(parser_filter(requested)?.unwrap_or_else(|| default.to_owned()))
}

/// The window the latency figures cover.
const LATENCY_WINDOW_MICROS: i64 = 10_000_000;

/// A time range from optional bounds: `[from, to)` in µs, open ends as the
/// extremes. An inverted range is the caller's mistake.
fn range(
    from: Option<pbjson_types::Timestamp>,
    to: Option<pbjson_types::Timestamp>,
) -> Result<(i64, i64), Status> {
    let from = from.as_ref().map_or(i64::MIN, clock::to_micros);
    let to = to.as_ref().map_or(i64::MAX, clock::to_micros);
    if from > to {
        return Err(Status::invalid_argument("`from` is after `to`"));
    }
    Ok((from, to))
}

/// Record kinds to follow: empty for every kind; an unknown number is the
/// caller's mistake.
fn kinds(requested: &[i32]) -> Result<KindSet, Status> {
    let kinds = requested
        .iter()
        .map(|&k| {
            RecordKind::try_from(k)
                .map_err(|_| Status::invalid_argument(format!("kinds: {k} is not a record kind")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(KindSet::of(kinds))
}

/// A tail's wait between looks: 0 means the default; out of bounds is
/// refused.
fn poll_interval(requested: u32) -> Result<Duration, Status> {
    let ms = match requested {
        0 => DEFAULT_POLL_MS,
        ms @ MIN_POLL_MS..=MAX_POLL_MS => ms,
        ms => {
            return Err(Status::invalid_argument(format!(
                "poll_ms {ms} is outside {MIN_POLL_MS}..={MAX_POLL_MS}"
            )));
        }
    };
    Ok(Duration::from_millis(u64::from(ms)))
}

/// Records a tail may have read and not yet handed to a slow client: with
/// a page read at a time, a tail holds at most this plus one page.
const TAIL_BUFFER: usize = 64;

/// Sends `cursor`'s rows to `tx` as they are stored, until the client goes
/// away or the server shuts down (`Ok`), or the store fails (the error,
/// which ends the stream).
async fn follow(
    store: &dyn Store,
    filter: &TailFilter,
    cursor: &mut tail::Cursor,
    poll: Duration,
    tx: &mpsc::Sender<Result<StoredRecord, Status>>,
    shutdown: &CancellationToken,
) -> Result<(), Status> {
    loop {
        if !cursor.in_round() {
            cursor.begin(tail::newest(store).await?, clock::now_micros());
        }
        let (page, full) = match cursor.range() {
            Some(range) => {
                let page = tail::read(store, filter, range).await?;
                let full = page.len() >= tail::PAGE as usize;
                (page, full)
            }
            None => (Vec::new(), false),
        };
        for row in cursor.take(page, full) {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                sent = tx.send(Ok(convert::stored_record(row))) => {
                    if sent.is_err() {
                        return Ok(());
                    }
                }
            }
        }
        if !full {
            // As in `watch_stats`: a client that hangs up ends the task now,
            // not at its next look.
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tx.closed() => return Ok(()),
                () = tokio::time::sleep(poll) => {}
            }
        }
    }
}

/// A field aggregation's query: the parser is required, and both paths
/// must follow the documented syntax.
fn field_query(
    request: &tributary::proto::AggregateFieldRequest,
) -> Result<tributary::store::FieldQuery, Status> {
    use tributary::store::FieldPath;
    let Some(parser) = parser_filter(request.parser.clone())? else {
        return Err(Status::invalid_argument("parser is required"));
    };
    let path = |name: &str, path: &str| {
        FieldPath::parse(path).map_err(|e| Status::invalid_argument(format!("{name} {path:?} {e}")))
    };
    let field = path("field", &request.field)?;
    let group_by = match request.group_by.as_str() {
        "" => None,
        group_by => Some(path("group_by", group_by)?),
    };
    let (from, to) = range(request.from, request.to)?;
    Ok(tributary::store::FieldQuery {
        parser,
        field,
        from,
        to,
        group_by,
    })
}

#[tonic::async_trait]
impl Query for QueryService {
    type WatchStatsStream = Pin<Box<dyn Stream<Item = Result<Stats, Status>> + Send>>;
    type WatchDashboardStream = Pin<Box<dyn Stream<Item = Result<Dashboard, Status>> + Send>>;
    type TailRecordsStream = Pin<Box<dyn Stream<Item = Result<StoredRecord, Status>> + Send>>;

    async fn aggregate_field(
        &self,
        request: Request<tributary::proto::AggregateFieldRequest>,
    ) -> Result<Response<tributary::proto::AggregateFieldResponse>, Status> {
        let request = request.into_inner();
        let query = field_query(&request)?;
        let result = self.store.aggregate_field(&query).await?;
        Ok(Response::new(convert::field_aggregates(
            request.parser,
            request.field,
            result,
        )))
    }

    async fn tail_records(
        &self,
        request: Request<TailRecordsRequest>,
    ) -> Result<Response<Self::TailRecordsStream>, Status> {
        let request = request.into_inner();
        let filter = TailFilter {
            parser: parser_filter(request.parser)?,
            source: non_empty(request.source),
            kinds: kinds(&request.kinds)?,
        };
        if request.backlog > MAX_BACKLOG {
            return Err(Status::invalid_argument(format!(
                "backlog {} is above the maximum of {MAX_BACKLOG}",
                request.backlog
            )));
        }
        let poll = poll_interval(request.poll_ms)?;
        let permit = self.tails.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "this server already follows {MAX_TAILS} tails; close one or retry later"
            ))
        })?;
        let after = match (request.after_id, request.backlog) {
            (0, backlog) => tail::start(&*self.store, &filter, backlog).await?,
            (after_id, 0) if after_id > 0 => after_id,
            (after_id, 0) => {
                return Err(Status::invalid_argument(format!(
                    "after_id {after_id} is negative"
                )));
            }
            (_, _) => {
                return Err(Status::invalid_argument(
                    "after_id resumes a tail where it broke off; backlog must then be 0",
                ));
            }
        };
        let settle = if self.store.ids_commit_in_order() {
            0
        } else {
            tail::SETTLE_MICROS
        };
        let (tx, rx) = mpsc::channel(TAIL_BUFFER);
        let store = self.store.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut cursor = tail::Cursor::new(after, settle);
            let outcome = follow(&*store, &filter, &mut cursor, poll, &tx, &shutdown).await;
            if let Err(status) = outcome {
                // The client may be gone already; then nobody needs to know.
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_stats(&self, _: Request<GetStatsRequest>) -> Result<Response<Stats>, Status> {
        Ok(Response::new(convert::stats(self.store.counts().await?)))
    }

    async fn watch_stats(
        &self,
        request: Request<WatchStatsRequest>,
    ) -> Result<Response<Self::WatchStatsStream>, Status> {
        let interval = interval(request.into_inner().interval_ms)?;
        let (tx, rx) = mpsc::channel(1);
        let store = self.store.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                // The task ends as soon as the client goes away, not at its
                // next tick: with a long interval a closed stream would
                // otherwise hold its task and buffers for that long.
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tx.closed() => return,
                    _ = tick.tick() => {}
                }
                let stats = store
                    .counts()
                    .await
                    .map(convert::stats)
                    .map_err(Status::from);
                if tx.send(stats).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_records(
        &self,
        request: Request<ListRecordsRequest>,
    ) -> Result<Response<ListRecordsResponse>, Status> {
        let request = request.into_inner();
        let bounds = Bounds::new(request.limit, request.max_bytes)?;
        let parser = parser_filter(request.parser)?;
        let source = non_empty(request.source);
        let (rows, next_after_id) = paging::read(bounds, request.after_id, |after_id, limit| {
            let filter = RecordFilter {
                parser: parser.clone(),
                source: source.clone(),
                after_id,
                limit,
            };
            async move { self.store.records(&filter).await }
        })
        .await?;
        Ok(Response::new(ListRecordsResponse {
            records: rows.into_iter().map(convert::stored_record).collect(),
            next_after_id,
        }))
    }

    async fn list_dead_letters(
        &self,
        request: Request<ListDeadLettersRequest>,
    ) -> Result<Response<ListDeadLettersResponse>, Status> {
        let request = request.into_inner();
        let bounds = Bounds::new(request.limit, request.max_bytes)?;
        let parser = parser_filter(request.parser)?;
        let (rows, next_after_id) = paging::read(bounds, request.after_id, |after_id, limit| {
            let filter = DeadLetterFilter {
                parser: parser.clone(),
                after_id,
                limit,
            };
            async move { self.store.dead_letters(&filter).await }
        })
        .await?;
        Ok(Response::new(ListDeadLettersResponse {
            dead_letters: rows.into_iter().map(convert::dead_letter).collect(),
            next_after_id,
        }))
    }

    async fn list_averages(
        &self,
        request: Request<ListAveragesRequest>,
    ) -> Result<Response<ListAveragesResponse>, Status> {
        let request = request.into_inner();
        let (from, to) = range(request.from, request.to)?;
        let filter = AverageFilter {
            parser: group(request.parser, averages::GROUP)?,
            from,
            to,
            limit: limit(request.limit)?,
        };
        let rows = averages::averages(self.store.as_ref(), &filter).await?;
        let (averages, skipped) = convert::averages(rows);
        Ok(Response::new(ListAveragesResponse { averages, skipped }))
    }

    async fn get_latency(
        &self,
        request: Request<GetLatencyRequest>,
    ) -> Result<Response<Latency>, Status> {
        let parser = group(request.into_inner().parser, probes::GROUP)?;
        let now = clock::now_micros();
        let row = probes::latency(self.store.as_ref(), &parser, now, LATENCY_WINDOW_MICROS).await?;
        Ok(Response::new(convert::latency(
            row,
            LATENCY_WINDOW_MICROS,
            now,
        )))
    }

    async fn aggregate_metric(
        &self,
        request: Request<AggregateMetricRequest>,
    ) -> Result<Response<AggregateMetricResponse>, Status> {
        let request = request.into_inner();
        if request.metric.is_empty() {
            return Err(Status::invalid_argument("metric is required"));
        }
        let (from, to) = range(request.from, request.to)?;
        let parser = group(request.parser, sensors::GROUP)?;
        let query = AggregateQuery {
            parser: parser.clone(),
            metric: request.metric.clone(),
            from,
            to,
            group_by_sensor: request.group_by_sensor,
        };
        let rows = sensors::aggregate(self.store.as_ref(), &query).await?;
        // No readings in the range: a metric with none at all is unknown,
        // and the answer says so and lists the ones there are.
        let mut known_metrics = Vec::new();
        let mut unknown_metric = false;
        if rows.is_empty() {
            let known = sensors::metrics(self.store.as_ref(), &parser).await?;
            if !known.contains(&request.metric) {
                unknown_metric = true;
                known_metrics = known;
            }
        }
        Ok(Response::new(AggregateMetricResponse {
            metric: request.metric,
            groups: rows.into_iter().map(convert::aggregate).collect(),
            known_metrics,
            unknown_metric,
        }))
    }

    async fn get_sms_progress(
        &self,
        request: Request<GetSmsProgressRequest>,
    ) -> Result<Response<SmsProgress>, Status> {
        let parser = group(request.into_inner().parser, sms::GROUP)?;
        let rows = sms::progress(self.store.as_ref(), &parser).await?;
        Ok(Response::new(convert::sms_progress(rows)))
    }

    async fn watch_dashboard(
        &self,
        request: Request<WatchDashboardRequest>,
    ) -> Result<Response<Self::WatchDashboardStream>, Status> {
        let plan = dashboard::Plan::new(request.into_inner())?;
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(dashboard::run(
            self.clone(),
            plan,
            tx,
            self.shutdown.clone(),
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
