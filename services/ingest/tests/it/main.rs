//! The Pull contract against hostile but legal clients: a real ingest
//! server on an ephemeral port, over the embedded queue and over NATS
//! JetStream, driven by a plain gRPC client.

mod pull;
