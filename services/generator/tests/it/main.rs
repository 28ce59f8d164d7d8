//! The library's publisher against a real ingest server (in process, on an
//! ephemeral port) whose queue can be made to refuse, as a queue does
//! during a NATS outage.

mod outage;
