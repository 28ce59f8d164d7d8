//! The api's REST face: the `tributary.v1.Query` routes that `rest_over_grpc`
//! generates from the `google.api.http` annotations, answered by the same
//! handlers as gRPC.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tributary::{rest::Transcode, store::Store};

use crate::QueryService;

/// The Query REST transcoder over `store`; watch streams end on `shutdown`.
pub fn transcoder(
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
) -> impl Transcode + Clone + Send + 'static {
    tributary::rest::query(QueryService::new(store, shutdown))
}
