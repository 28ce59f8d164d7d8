//! The `tributary.v1.Fleet` service: the supervisor's live state for the
//! dashboard and scripts, served by the supervisor itself with health and
//! reflection.

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tributary::{
    clock, grpc,
    proto::{
        self, FleetPhase, FleetStatus, GetFleetStatusRequest,
        fleet_server::{Fleet as FleetApi, FleetServer},
    },
};

use crate::state::{Fleet, Phase, SlotState, Snapshot, WorkerStats};

/// Serves `Fleet` (plus health and reflection) on `listener` until `stop`.
pub async fn serve(
    listener: TcpListener,
    serving: grpc::Serving,
    fleet: Fleet,
    stop: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let rest = tributary::rest::fleet(FleetService {
        fleet: fleet.clone(),
    });
    let mut routes = tonic::service::RoutesBuilder::from(tributary::rest::router(rest));
    routes.add_service(FleetServer::new(FleetService { fleet }));
    grpc::add_standard_services(
        &mut routes,
        &[grpc::service_name::<FleetServer<FleetService>>()],
    )
    .await;
    grpc::serve_with(listener, routes.routes(), serving, stop).await
}

struct FleetService {
    fleet: Fleet,
}

#[tonic::async_trait]
impl FleetApi for FleetService {
    async fn get_fleet_status(
        &self,
        _request: Request<GetFleetStatusRequest>,
    ) -> Result<Response<FleetStatus>, Status> {
        Ok(Response::new(to_proto(&self.fleet.snapshot())))
    }
}

/// The proto form of a snapshot.
pub fn to_proto(s: &Snapshot) -> FleetStatus {
    let phase = match s.phase {
        Phase::Running => FleetPhase::Running,
        Phase::Done => FleetPhase::Done,
        Phase::Interrupted => FleetPhase::Interrupted,
        Phase::Failed => FleetPhase::Failed,
    };
    FleetStatus {
        phase: phase.into(),
        target: s.target,
        collected: s.collected,
        elapsed_seconds: s.elapsed_seconds,
        max_workers: s.max_workers,
        live_workers: s.live_workers,
        peak_live_workers: s.peak_live_workers,
        crashes: s.crashes,
        restarts: s.restarts,
        stalls: s.stalls,
        broken_connections: s.broken_connections,
        start_failures: s.start_failures,
        junk_lines: s.junk_lines,
        workers: s.workers.iter().map(worker_to_proto).collect(),
        read_at: Some(clock::now_timestamp()),
    }
}

fn worker_to_proto(w: &WorkerStats) -> proto::FleetWorker {
    let state = match w.state {
        SlotState::Starting => proto::FleetWorkerState::Starting,
        SlotState::Streaming => proto::FleetWorkerState::Streaming,
        SlotState::BackingOff => proto::FleetWorkerState::BackingOff,
        SlotState::Stopped => proto::FleetWorkerState::Stopped,
    };
    proto::FleetWorker {
        worker_id: w.worker_id,
        state: state.into(),
        pid: w.pid.unwrap_or(0),
        port: w.port.map_or(0, u32::from),
        samples: w.samples,
        crashes: w.crashes,
        restarts: w.restarts,
        stalls: w.stalls,
        broken_connections: w.broken_connections,
        start_failures: w.start_failures,
        junk_lines: w.junk_lines,
        pids: w.pids.clone(),
        busy_answers: w.busy_answers,
    }
}
