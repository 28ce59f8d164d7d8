//! A response body that keeps a value alive until the body ends: a stream
//! counted open, or a concurrency slot, is released when the last frame is
//! sent or the client goes away, not when the handler returns.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

pin_project_lite::pin_project! {
    /// `body`, holding `held` until it is dropped.
    pub struct Held<T> {
        #[pin]
        body: tonic::body::Body,
        held: T,
    }
}

impl<T> Held<T> {
    /// `body` holding `held`, as a tonic body.
    pub fn wrap(body: tonic::body::Body, held: T) -> tonic::body::Body
    where
        T: Send + 'static,
    {
        tonic::body::Body::new(Held { body, held })
    }
}

impl<T> http_body::Body for Held<T> {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
