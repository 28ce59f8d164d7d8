//! The `tributary.v1.Query` handlers.

use std::{pin::Pin, sync::Arc, time::Duration};

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tributary::{
    proto::{
        GetStatsRequest, ListDeadLettersRequest, ListDeadLettersResponse, ListRecordsRequest,
        ListRecordsResponse, Stats, WatchStatsRequest, query_server::Query,
    },
    store::{RecordFilter, Store},
};

use crate::convert;

/// Page size when a request gives none, and the most a page may hold.
const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;

/// The Query service over one store.
pub struct QueryService {
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
}

impl QueryService {
    /// A service reading `store`; watch streams end on `shutdown`.
    pub fn new(store: Arc<dyn Store>, shutdown: CancellationToken) -> Self {
        Self { store, shutdown }
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

#[tonic::async_trait]
impl Query for QueryService {
    type WatchStatsStream = Pin<Box<dyn Stream<Item = Result<Stats, Status>> + Send>>;

    async fn get_stats(&self, _: Request<GetStatsRequest>) -> Result<Response<Stats>, Status> {
        Ok(Response::new(convert::stats(self.store.counts().await?)))
    }

    async fn watch_stats(
        &self,
        request: Request<WatchStatsRequest>,
    ) -> Result<Response<Self::WatchStatsStream>, Status> {
        let interval = match request.into_inner().interval_ms {
            0 => 1000,
            ms if ms < 100 => {
                return Err(Status::invalid_argument("interval_ms must be at least 100"));
            }
            ms => ms,
        };
        let (tx, rx) = mpsc::channel(1);
        let store = self.store.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(u64::from(interval)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
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
        let limit = limit(request.limit)?;
        let rows = self
            .store
            .records(&RecordFilter {
                parser: non_empty(request.parser),
                source: non_empty(request.source),
                after_id: request.after_id,
                limit,
            })
            .await?;
        let next_after_id = if rows.len() == limit as usize {
            rows.last().map_or(0, |r| r.id)
        } else {
            0
        };
        let records = rows
            .into_iter()
            .map(convert::stored_record)
            .collect::<Result<_, _>>()?;
        Ok(Response::new(ListRecordsResponse {
            records,
            next_after_id,
        }))
    }

    async fn list_dead_letters(
        &self,
        request: Request<ListDeadLettersRequest>,
    ) -> Result<Response<ListDeadLettersResponse>, Status> {
        let request = request.into_inner();
        let limit = limit(request.limit)?;
        let parser = non_empty(request.parser);
        let rows = self.store.dead_letters(parser.as_deref(), limit).await?;
        let dead_letters = rows
            .into_iter()
            .map(convert::dead_letter)
            .collect::<Result<_, _>>()?;
        Ok(Response::new(ListDeadLettersResponse { dead_letters }))
    }
}
