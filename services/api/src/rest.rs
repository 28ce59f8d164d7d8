//! The api's REST face: the `tributary.v1.Query` routes that `rest_over_grpc`
//! generates from the `google.api.http` annotations, answered by the same
//! handlers as gRPC.

use tributary::rest::Transcode;

use crate::QueryService;

/// The Query REST transcoder answered by `query`, the same service that
/// answers gRPC.
pub fn transcoder(query: QueryService) -> impl Transcode + Clone + Send + 'static {
    tributary::rest::query(query)
}
