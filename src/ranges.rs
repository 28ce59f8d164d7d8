//! The value ranges of the read API, in one place: the Query service checks
//! requests against these constants, and the OpenAPI document served at
//! `/openapi.json` states them in its parameters' schemas
//! ([`crate::rest::openapi_document`]), so that clients and schemathesis
//! see the same bounds the server enforces.
//!
//! Group names follow [`crate::queue::check_group`]; record values are
//! checked at ingest (`tributary_ingest::validate`) and answered per record,
//! so they are described in the proto rather than in schemas.

/// Page size when a request gives none (`limit` 0).
pub const DEFAULT_LIMIT: u32 = 100;
/// The most rows a page may hold.
pub const MAX_LIMIT: u32 = 1000;

/// Bytes a page may hold when a request gives no bound (`max_bytes` 0):
/// under the 4 MiB message limit that gRPC clients (grpcurl, grpcio, tonic)
/// default to, with room for the fields beside the bodies.
pub const DEFAULT_MAX_BYTES: usize = 3 << 20;
/// The most bytes a client may ask for in one page.
pub const MAX_MAX_BYTES: usize = 64 << 20;

/// A watch stream's interval when a request gives none (`interval_ms` 0).
pub const DEFAULT_INTERVAL_MS: u32 = 1000;
/// The shortest and longest interval between two updates of a watch
/// stream: a bound below keeps one client from making the server poll the
/// store in a loop, a bound above keeps a stream from idling for days.
pub const MIN_INTERVAL_MS: u32 = 100;
pub const MAX_INTERVAL_MS: u32 = 60_000;

/// A consumer group (parser) name in a read, as a JSON-schema pattern:
/// empty for the parser type's default group, else what
/// [`crate::queue::check_group`] takes.
pub const GROUP_PATTERN: &str = "^[A-Za-z0-9_-]*$";

/// A tail's wait between two looks at the store when nothing new arrived,
/// when a request gives none (`poll_ms` 0).
pub const DEFAULT_POLL_MS: u32 = 200;
/// The shortest and longest wait between two looks of a tail: a bound
/// below keeps one client from making the server poll the store in a loop.
pub const MIN_POLL_MS: u32 = 50;
pub const MAX_POLL_MS: u32 = 10_000;
/// The most stored records a tail sends before the new ones.
pub const MAX_BACKLOG: u32 = 1000;
/// Tails one server follows at once; one more is refused with
/// `RESOURCE_EXHAUSTED`, since each polls the store.
pub const MAX_TAILS: usize = 64;
