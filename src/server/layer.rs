//! What every request passes before and after the generated services:
//!
//! * a content type other than `application/grpc*` is refused (HTTP 415);
//! * who calls is checked ([`crate::auth`]): the caller's tenant and
//!   principal go into the request's extensions, where the call's context
//!   ([`crate::grpc::Ctx`]) takes them from;
//! * the whole call — reading its body included — ends by its deadline
//!   (`grpc-timeout`, else `server.default_timeout`), as DEADLINE_EXCEEDED,
//!   so a body that never ends cannot hold a call open;
//! * a unary request must carry one message, and undecodable requests
//!   are the caller's mistake ([`super::requests`]);
//! * a streaming call is answered plain unless `server.compress_streams`
//!   (tonic compresses a whole stream or none of it, so the size rule of
//!   unary answers cannot apply per message).

use std::{
    collections::HashSet,
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame};
use prost::Message;
use tonic::service::Routes;
use tower::Service;

use super::requests::{OneMessage, remap};
use super::{
    Limits,
    conn::{Activity, CallGuard},
};
use crate::auth::{Caller, Denied, quota::StreamSlot};
use tonic_types::{ErrorDetails, StatusExt};

/// The paths (`/pkg.Service/Method`) of every unary method in a
/// descriptor set.
pub fn unary_paths(descriptor_set: &[u8]) -> HashSet<String> {
    let Ok(set) = prost_types::FileDescriptorSet::decode(descriptor_set) else {
        return HashSet::new();
    };
    let mut paths = HashSet::new();
    for file in set.file {
        for service in &file.service {
            for method in &service.method {
                if !method.client_streaming() && !method.server_streaming() {
                    paths.insert(format!(
                        "/{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
    }
    paths
}

/// Who is at the other end of a connection.
#[derive(Clone, Default)]
pub(super) struct Peer {
    pub ip: Option<std::net::IpAddr>,
    /// The verified client certificate's common name (mTLS).
    pub common_name: Option<Arc<str>>,
}

#[derive(Clone)]
pub(super) struct Layered {
    routes: Routes,
    limits: Arc<Limits>,
    activity: Arc<Activity>,
    peer: Peer,
}

impl Layered {
    pub(super) fn new(
        routes: Routes,
        limits: Arc<Limits>,
        activity: Arc<Activity>,
        peer: Peer,
    ) -> Self {
        Self {
            routes,
            limits,
            activity,
            peer,
        }
    }
}

/// The answer to a call refused before any service saw it.
fn denied(denial: Denied) -> Response<tonic::body::Body> {
    let status = match denial {
        Denied::Unauthenticated { message, .. } => {
            tonic::Status::new(tonic::Code::Unauthenticated, message)
        }
        Denied::PermissionDenied(message) => {
            tonic::Status::new(tonic::Code::PermissionDenied, message)
        }
        Denied::Throttled {
            message,
            retry_after,
        } => {
            metrics::counter!(crate::metrics::QUOTA_REFUSALS).increment(1);
            tonic::Status::with_error_details(
                tonic::Code::ResourceExhausted,
                message,
                ErrorDetails::with_retry_info(Some(retry_after)),
            )
        }
    };
    status.into_http()
}

/// A trailers-only gRPC answer (status in the headers).
fn status_only(code: tonic::Code, message: &str) -> Response<tonic::body::Body> {
    let mut response = Response::new(tonic::body::Body::empty());
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from(code as i32));
    if let Ok(value) = HeaderValue::from_str(message) {
        headers.insert("grpc-message", value);
    }
    response
}

impl Service<Request<hyper::body::Incoming>> for Layered {
    type Response = Response<Tracked>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<hyper::body::Incoming>) -> Self::Future {
        let guard = self.activity.begin();
        let grpc = request
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/grpc"));
        if !grpc {
            let mut response = Response::new(tonic::body::Body::empty());
            *response.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
            return Box::pin(async move { Ok(response.map(|b| Tracked::new(b, guard, None))) });
        }
        let mut request = request;
        let path = request.uri().path().to_owned();
        let unary = self.limits.unary.contains(&path);
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or(("", ""));
        let caller = Caller {
            service,
            method,
            authorization: request
                .headers()
                .get(http::header::AUTHORIZATION)
                .map(HeaderValue::as_bytes),
            peer: self.peer.ip,
            cert_common_name: self.peer.common_name.as_deref(),
            streaming: !unary,
        };
        let slot = match self.limits.auth.authorize(&caller) {
            Ok(admitted) => {
                let extensions = request.extensions_mut();
                extensions.insert(admitted.principal.tenant.clone());
                extensions.insert(admitted.principal);
                admitted.stream_slot
            }
            Err(denial) => {
                let response = denied(denial);
                return Box::pin(async move { Ok(response.map(|b| Tracked::new(b, guard, None))) });
            }
        };
        if !unary && !self.limits.compress_streams {
            // Tonic picks the answer's encoding from this header.
            request.headers_mut().remove("grpc-accept-encoding");
        }
        let metadata = tonic::metadata::MetadataMap::from_headers(request.headers().clone());
        // A little past the call's own deadline, so a handler that is
        // still answering gets to answer first.
        let deadline = self.limits.deadlines.for_metadata(&metadata) + Duration::from_millis(50);
        let request = request.map(|body| OneMessage::new(body, unary));
        let mut routes = self.routes.clone();
        Box::pin(async move {
            let answer = tokio::time::timeout(deadline, routes.call(request)).await;
            let mut response = match answer {
                Ok(Ok(response)) => response,
                Ok(Err(never)) => match never {},
                Err(_) => status_only(
                    tonic::Code::DeadlineExceeded,
                    "the call's deadline passed before its request was read",
                ),
            };
            remap(&mut response, &path);
            Ok(response.map(|b| Tracked::new(b, guard, slot)))
        })
    }
}

/// A response body that marks its call finished when it is dropped (and
/// frees the stream slot of its tenant's quota).
pub(super) struct Tracked {
    inner: tonic::body::Body,
    _guard: CallGuard,
    _slot: Option<StreamSlot>,
}

impl Tracked {
    fn new(inner: tonic::body::Body, guard: CallGuard, slot: Option<StreamSlot>) -> Self {
        Self {
            inner,
            _guard: guard,
            _slot: slot,
        }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
