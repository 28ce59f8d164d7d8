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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};

    use tonic::service::RoutesBuilder;
    use tributary::proto::coordinator_client::CoordinatorClient;

    use super::*;
    use std::collections::HashMap;

    /// A wall clock the test sets, steps included.
    struct SetClock(AtomicI64);

    impl WallClock for SetClock {
        fn now_micros(&self) -> i64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    /// Claims over a real Claim stream while the injected wall clock runs
    /// for a minute, then steps back 60 s and runs again: nothing granted
    /// before the step is granted again (to another generator, or as a
    /// different value), and claims by the stepped clock are refused.
    #[tokio::test]
    async fn a_wall_clock_stepped_back_sixty_seconds_regrants_nothing() {
        let start_tick = 17_638_000_000;
        let clock = Arc::new(SetClock(AtomicI64::new(clock::tick_start(start_tick))));
        let shutdown = CancellationToken::new();
        let mut routes = RoutesBuilder::default();
        routes.add_service(crate::service(clock.clone(), shutdown.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(tributary::grpc::serve(
            listener,
            routes.routes(),
            None,
            shutdown.clone(),
        ));
        let mut client = CoordinatorClient::connect(url).await.unwrap();
        // Two generators, each on its own stream, one claim at a time.
        let mut streams = Vec::new();
        for id in ["a", "b"] {
            let (tx, rx) = mpsc::channel(1);
            tx.send(ClaimRequest {
                generator_id: id.into(),
                tick: start_tick,
                min: 1,
                max: 4,
            })
            .await
            .unwrap();
            let mut responses = client
                .claim(ReceiverStream::new(rx))
                .await
                .unwrap()
                .into_inner();
            responses.next().await.unwrap().unwrap();
            streams.push((id, tx, responses));
        }
        let mut claim = async |who: usize, tick: i64| {
            let (id, tx, responses) = &mut streams[who];
            tx.send(ClaimRequest {
                generator_id: (*id).into(),
                tick,
                min: 1,
                max: 4,
            })
            .await
            .unwrap();
            let response = responses.next().await.unwrap().unwrap();
            (!response.refused).then_some(response.value)
        };
        let mut granted: HashMap<(i64, usize), i64> = HashMap::new();
        // A minute of ticks; each generator claims the next one.
        let first = start_tick + 2;
        let last = first + 600;
        for now in first..last {
            clock.0.store(clock::tick_start(now), Ordering::SeqCst);
            for who in 0..2 {
                let value = claim(who, now + 1).await.expect("a grant in time");
                granted.insert((now + 1, who), value);
            }
        }
        // The clock steps back 60 s and runs forward again; the generators
        // follow it, claiming their next tick, as after the step.
        for now in last - 600..last {
            clock.0.store(clock::tick_start(now), Ordering::SeqCst);
            for who in 0..2 {
                for tick in [now, now + 1] {
                    let Some(value) = claim(who, tick).await else {
                        continue;
                    };
                    assert_eq!(
                        granted.get(&(tick, who)),
                        Some(&value),
                        "tick {tick} granted anew after the step back"
                    );
                }
            }
        }
        shutdown.cancel();
    }
}
