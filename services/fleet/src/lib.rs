//! Worker fleet (workload W2): `tributary-worker`, an HTTP worker that
//! streams random numbers with switchable faults, and the supervisor behind
//! `tributary fleet collect`, which collects an exact number of samples from
//! a fleet of crashing workers of any binary that speaks the protocol.
#![forbid(unsafe_code)]

pub mod connection;
pub mod line;
pub mod process;
pub mod publish;
pub mod state;
pub mod status;
pub mod supervisor;
pub mod worker;

pub use supervisor::{Config, Report, Supervisor};
