//! Shared library of the Tributary streaming mesh: the protobuf contracts, the
//! queue and store traits with their backends, the publisher every producer
//! uses, and the plumbing every service shares (gRPC standard services, TLS,
//! the bearer token, shutdown, telemetry, the retry back-off).
#![forbid(unsafe_code)]

pub mod access;
pub mod backoff;
pub mod bearer;
pub mod call_failure;
pub mod channel;
pub mod clock;
pub mod grpc;
pub mod grpc_client;
pub mod held_body;
pub mod json_check;
pub mod kind;
pub mod limits;
pub mod log_throttle;
pub mod metrics;
pub mod proto;
pub mod publisher;
pub mod queue;
pub mod ranges;
pub mod rest;
pub mod shutdown;
mod span_export;
mod sqlite;
pub mod store;
pub mod telemetry;
#[cfg(any(test, feature = "testkit"))]
#[doc(hidden)]
pub mod testkit;
pub mod tls;
pub mod trace_context;
pub mod wire;
pub mod workloads;
