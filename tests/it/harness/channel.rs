//! The test clients' channel: tonic's, plus an `authorization` header on
//! every call when the app view acts as an API key.

use std::task::{Context, Poll};

use http::HeaderValue;
use tower::Service;

#[derive(Clone)]
pub struct Channel {
    inner: tonic::transport::Channel,
    authorization: Option<HeaderValue>,
}

impl Channel {
    pub fn new(inner: tonic::transport::Channel) -> Self {
        Self {
            inner,
            authorization: None,
        }
    }

    /// The same connection, sending `authorization: Bearer <key>`.
    pub fn with_key(&self, key: &str) -> Self {
        Self {
            inner: self.inner.clone(),
            authorization: Some(
                HeaderValue::from_str(&format!("Bearer {key}")).expect("ascii key"),
            ),
        }
    }
}

impl Service<http::Request<tonic::body::Body>> for Channel {
    type Response = http::Response<tonic::body::Body>;
    type Error = tonic::transport::Error;
    type Future = tonic::transport::channel::ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::<http::Request<tonic::body::Body>>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        if let Some(value) = &self.authorization {
            request
                .headers_mut()
                .insert(http::header::AUTHORIZATION, value.clone());
        }
        self.inner.call(request)
    }
}
