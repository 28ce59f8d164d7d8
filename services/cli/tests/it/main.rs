//! Integration tests of the `tributary` binary: each test starts real
//! processes on ephemeral ports with its own data directory.

mod alerts;
mod auth;
mod bad_input;
mod cluster;
mod compose;
mod compose_stack;
mod crash;
mod dashboard;
mod end_to_end;
mod eventually;
mod first_run;
mod fleet;
mod limits;
mod mesh;
mod nats_outage;
mod notebook;
mod observability;
mod open_records;
mod peers;
mod python_client;
mod queue;
mod readme;
mod rest;
mod schemathesis;
mod server_limits;
mod support;
mod tail;
mod tls;
mod traces;
mod workloads;
