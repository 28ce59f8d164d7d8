//! The `tributary.v1.Coordinator` handler: one task per Claim stream, which
//! is the generator's membership for as long as it stays open.

use std::{
    pin::Pin,
    sync::{Arc, Mutex},
};

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tributary::{
    clock::{self, WallClock},
    metrics,
    proto::{ClaimRequest, ClaimResponse, coordinator_server::Coordinator},
};

use crate::claims::Claims;

/// The longest generator id accepted, in bytes. The coordinator keeps each
/// id in its membership and beside every grant for the ticks it remembers,
/// and logs it on join and leave: an unbounded id would let one caller fill
/// memory and logs. It is the bound on a record's source, which a
/// generator's id usually becomes part of.
pub const MAX_GENERATOR_ID_BYTES: usize = 256;

/// The largest Claim request decoded: a request is an id within
/// [`MAX_GENERATOR_ID_BYTES`] and a few integers, so anything much larger is
/// refused before it is buffered.
pub const MAX_REQUEST_BYTES: usize = 4 << 10;

/// The Coordinator service of one incarnation.
pub struct CoordinatorService {
    claims: Arc<Mutex<Claims>>,
    clock: Arc<dyn WallClock>,
    epoch: u64,
    shutdown: CancellationToken,
}

impl CoordinatorService {
    /// A new incarnation: it starts now, by `clock`.
    pub fn new(clock: Arc<dyn WallClock>, shutdown: CancellationToken) -> Self {
        let started = clock.now_micros();
        let epoch = started as u64;
        tracing::info!(epoch, "coordinator incarnation started");
        Self {
            claims: Arc::new(Mutex::new(Claims::new(
                clock::tick_of(started),
                rand::random(),
            ))),
            clock,
            epoch,
            shutdown,
        }
    }
}

/// Leaves the membership when the stream's task ends, however it ends.
struct Membership {
    claims: Arc<Mutex<Claims>>,
    generator: String,
}

impl Drop for Membership {
    fn drop(&mut self) {
        let mut claims = self.claims.lock().expect("claims are never poisoned");
        claims.leave(&self.generator);
        tracing::info!(generator = %self.generator, members = claims.members(), "generator left");
    }
}

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    type ClaimStream = Pin<Box<dyn Stream<Item = Result<ClaimResponse, Status>> + Send>>;

    async fn claim(
        &self,
        request: Request<Streaming<ClaimRequest>>,
    ) -> Result<Response<Self::ClaimStream>, Status> {
        let mut requests = request.into_inner();
        let first = match requests.next().await {
            Some(Ok(first)) => first,
            Some(Err(status)) => return Err(status),
            None => return Err(Status::invalid_argument("the stream ended before a claim")),
        };
        if first.generator_id.is_empty() {
            return Err(Status::invalid_argument("generator_id is required"));
        }
        if first.generator_id.len() > MAX_GENERATOR_ID_BYTES {
            return Err(Status::invalid_argument(format!(
                "generator_id is {} bytes long; the limit is {MAX_GENERATOR_ID_BYTES}",
                first.generator_id.len()
            )));
        }
        let generator = first.generator_id.clone();
        {
            let mut claims = self.claims.lock().expect("claims are never poisoned");
            if !claims.join(&generator) {
                return Err(Status::already_exists(format!(
                    "generator {generator:?} already has an open Claim stream"
                )));
            }
            tracing::info!(%generator, members = claims.members(), "generator joined");
        }
        let membership = Membership {
            claims: self.claims.clone(),
            generator,
        };
        let (tx, rx) = mpsc::channel(16);
        let clock = self.clock.clone();
        let epoch = self.epoch;
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let answer = |request: ClaimRequest| -> Result<ClaimResponse, Status> {
                if request.generator_id != membership.generator {
                    return Err(Status::invalid_argument(
                        "generator_id must stay the same on one stream",
                    ));
                }
                let now = clock::tick_of(clock.now_micros());
                let (granted, conflicted) = {
                    let mut claims = membership.claims.lock().expect("claims are never poisoned");
                    let before = claims.conflicts();
                    let granted = claims.claim(
                        &request.generator_id,
                        request.tick,
                        request.min,
                        request.max,
                        now,
                    );
                    (granted, claims.conflicts() > before)
                };
                if granted.is_ok() {
                    metrics::counter!(metrics::COORDINATOR_CLAIMS).increment(1);
                }
                if conflicted {
                    metrics::counter!(metrics::COORDINATOR_CONFLICTS).increment(1);
                }
                Ok(match granted {
                    Ok(value) => ClaimResponse {
                        tick: request.tick,
                        value,
                        epoch,
                        ..Default::default()
                    },
                    Err(refusal) => ClaimResponse {
                        tick: request.tick,
                        epoch,
                        refused: true,
                        reason: refusal.to_string(),
                        ..Default::default()
                    },
                })
            };
            let mut next = Some(Ok(first));
            loop {
                let request = match next.take() {
                    Some(request) => request,
                    None => tokio::select! {
                        () = shutdown.cancelled() => return,
                        request = requests.next() => match request {
                            Some(request) => request,
                            None => return,
                        },
                    },
                };
                let response = request.and_then(answer);
                let failed = response.is_err();
                if tx.send(response).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
