//! The `tributary.v1.Ingest` handlers: they translate between proto and the
//! publish and pull logic, nothing more.

use std::{pin::Pin, sync::Arc};

use futures::Stream;
use prost::Message as _;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tributary::{
    proto::{
        ConsumerGroup, DeleteGroupRequest, DeleteGroupResponse, ListGroupsRequest,
        ListGroupsResponse, PublishBatchRequest, PublishBatchResponse, PublishRequest,
        PublishResponse, PullRequest, PullResponse, ingest_server::Ingest,
    },
    queue::Queue,
};

use crate::{Limits, publish, pull};

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The Ingest service over one queue.
#[derive(Clone)]
pub struct IngestService {
    pub(crate) queue: Arc<dyn Queue>,
    pub(crate) limits: Arc<Limits>,
    pub(crate) shutdown: CancellationToken,
    /// Bytes of publish data this service may hold in flight
    /// (`--inflight-bytes`), shared by every clone: gRPC and REST alike.
    pub(crate) budget: Arc<Semaphore>,
}

impl IngestService {
    /// A service publishing to and pulling from `queue`. Streams end when
    /// `shutdown` is cancelled.
    pub fn new(queue: Arc<dyn Queue>, limits: Limits, shutdown: CancellationToken) -> Self {
        Self {
            queue,
            budget: Arc::new(Semaphore::new(
                limits.inflight_bytes.min(Semaphore::MAX_PERMITS),
            )),
            limits: Arc::new(limits),
            shutdown,
        }
    }
}

#[tonic::async_trait]
impl Ingest for IngestService {
    type PublishStream = ResponseStream<PublishResponse>;
    type PullStream = ResponseStream<PullResponse>;

    async fn publish(
        &self,
        request: Request<Streaming<PublishRequest>>,
    ) -> Result<Response<Self::PublishStream>, Status> {
        Ok(Response::new(publish::stream(
            self.clone(),
            request.into_inner(),
        )))
    }

    async fn publish_batch(
        &self,
        request: Request<PublishBatchRequest>,
    ) -> Result<Response<PublishBatchResponse>, Status> {
        let request = request.into_inner();
        publish::check_count(request.records.len(), &self.limits)?;
        let outcome = match publish::reserve(&self.budget, request.encoded_len()) {
            // The call's own span (its parent from the caller's metadata)
            // is the parent of the batch's spans.
            Some(_permit) => {
                publish::accept(&self.queue, &self.limits, request.records, None).await
            }
            None => publish::shed(request.records),
        };
        Ok(Response::new(PublishBatchResponse {
            accepted: outcome.accepted,
            duplicates: outcome.duplicates,
            rejections: outcome.rejections,
            rejected: outcome.rejected,
        }))
    }

    async fn pull(
        &self,
        request: Request<Streaming<PullRequest>>,
    ) -> Result<Response<Self::PullStream>, Status> {
        let stream = pull::stream(self.clone(), request.into_inner()).await?;
        Ok(Response::new(stream))
    }

    async fn list_groups(
        &self,
        _request: Request<ListGroupsRequest>,
    ) -> Result<Response<ListGroupsResponse>, Status> {
        let groups = self.queue.groups().await?;
        Ok(Response::new(ListGroupsResponse {
            groups: groups
                .into_iter()
                .map(|g| ConsumerGroup {
                    name: g.name,
                    kinds: g.kinds.kinds().map(|k| k as i32).collect(),
                    members: u32::try_from(g.members).unwrap_or(u32::MAX),
                    lag: g.lag,
                    idle_seconds: g.idle.as_secs(),
                })
                .collect(),
        }))
    }

    async fn delete_group(
        &self,
        request: Request<DeleteGroupRequest>,
    ) -> Result<Response<DeleteGroupResponse>, Status> {
        let group = request.into_inner().group;
        tributary::queue::check_group(&group).map_err(Status::invalid_argument)?;
        match self.queue.delete_group(&group).await? {
            Some(dropped) => Ok(Response::new(DeleteGroupResponse { dropped })),
            None => Err(Status::not_found(format!("no consumer group {group:?}"))),
        }
    }
}
