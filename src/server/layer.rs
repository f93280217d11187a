//! What every request passes before and after the generated services:
//!
//! * a content type other than `application/grpc*` is refused (HTTP 415);
//! * the whole call — reading its body included — ends by its deadline
//!   (`grpc-timeout`, else `server.default_timeout`), as DEADLINE_EXCEEDED,
//!   so a body that never ends cannot hold a call open;
//! * a unary request must carry exactly one message;
//! * a request the codec could not read is `INVALID_ARGUMENT` (never
//!   `INTERNAL`), counted under its method and logged at debug; a message
//!   over the size limit is `OUT_OF_RANGE`, compressed or not.

use std::{
    collections::HashSet,
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf, Bytes};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame};
use prost::Message;
use tonic::service::Routes;
use tower::Service;

use super::{
    Limits,
    conn::{Activity, CallGuard},
};
use crate::grpc::codec::DECODE_ERROR_MARK;
use tonic_types::{ErrorDetails, StatusExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

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

#[derive(Clone)]
pub(super) struct Layered {
    routes: Routes,
    limits: Arc<Limits>,
    activity: Arc<Activity>,
}

impl Layered {
    pub(super) fn new(routes: Routes, limits: Arc<Limits>, activity: Arc<Activity>) -> Self {
        Self {
            routes,
            limits,
            activity,
        }
    }
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

/// The codec and tonic's framing report what a request got wrong as
/// INTERNAL or RESOURCE_EXHAUSTED; these are the caller's mistakes.
fn remap(response: &mut Response<tonic::body::Body>, path: &str) {
    let headers = response.headers_mut();
    let marked = headers.remove(DECODE_ERROR_MARK).is_some();
    let status = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let message = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .map(percent_decode)
        .unwrap_or_default();
    let new_code = match status.as_deref() {
        _ if marked => Some(tonic::Code::InvalidArgument),
        Some("13") if is_framing_error(&message) => Some(tonic::Code::InvalidArgument),
        // A compressed request that inflates past the limit: the same
        // answer as one over the limit on the wire.
        Some("8") if message.contains("exceeded while decompressing") => {
            Some(tonic::Code::OutOfRange)
        }
        _ => None,
    };
    let Some(code) = new_code else { return };
    if marked {
        // The codec's own answer already names the bad request.
        headers.insert("grpc-status", HeaderValue::from(code as i32));
    } else {
        // tonic's framing error: answer as the codec does, with a
        // BadRequest naming the request.
        let status = if code == tonic::Code::InvalidArgument {
            tonic::Status::with_error_details(
                code,
                format!("invalid argument: request: {message}"),
                ErrorDetails::with_bad_request_violation("request", message.clone()),
            )
        } else {
            tonic::Status::new(code, message.clone())
        };
        *response = status.into_http();
    }
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or(("", ""));
    metrics::counter!(
        crate::metrics::RPC_DECODE_ERRORS,
        "service" => service.to_owned(),
        "method" => method.to_owned(),
    )
    .increment(1);
    tracing::debug!(%path, reason = %message, "refused a request that does not decode");
}

/// tonic's own words for a request body it could not read.
fn is_framing_error(message: &str) -> bool {
    [
        "Missing request message",
        "Error decompressing",
        "Message compressed with",
        "protocol error",
        "Unexpected EOF",
        "failed to decode",
    ]
    .iter()
    .any(|m| message.contains(m))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&text[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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
            return Box::pin(async move { Ok(response.map(|b| Tracked::new(b, guard))) });
        }
        let path = request.uri().path().to_owned();
        let metadata = tonic::metadata::MetadataMap::from_headers(request.headers().clone());
        // A little past the call's own deadline, so a handler that is
        // still answering gets to answer first.
        let deadline = self.limits.deadlines.for_metadata(&metadata) + Duration::from_millis(50);
        let unary = self.limits.unary.contains(&path);
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
            Ok(response.map(|b| Tracked::new(b, guard)))
        })
    }
}

/// A response body that marks its call finished when it is dropped.
pub(super) struct Tracked {
    inner: tonic::body::Body,
    _guard: CallGuard,
}

impl Tracked {
    fn new(inner: tonic::body::Body, guard: CallGuard) -> Self {
        Self {
            inner,
            _guard: guard,
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

/// A request body that, for a unary method, refuses a second message: it
/// follows the gRPC framing (1 byte flag, 4 bytes length, the message).
pub(super) struct OneMessage {
    inner: hyper::body::Incoming,
    unary: bool,
    /// Bytes of the current frame's header seen, and its length once known.
    header: Vec<u8>,
    remaining: u64,
    messages: u32,
}

impl OneMessage {
    fn new(inner: hyper::body::Incoming, unary: bool) -> Self {
        Self {
            inner,
            unary,
            header: Vec::with_capacity(5),
            remaining: 0,
            messages: 0,
        }
    }

    /// Follows the frames in `data`; false once a second message starts.
    fn follow(&mut self, mut data: &[u8]) -> bool {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = (self.remaining as usize).min(data.len());
                self.remaining -= n as u64;
                data = &data[n..];
                continue;
            }
            if self.header.is_empty() {
                self.messages += 1;
                if self.messages > 1 {
                    return false;
                }
            }
            let need = 5 - self.header.len();
            let n = need.min(data.len());
            self.header.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.header.len() == 5 {
                self.remaining = u64::from(u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]));
                self.header.clear();
            }
        }
        true
    }
}

impl Body for OneMessage {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if this.unary
                    && let Some(data) = frame.data_ref()
                    && !this.follow(data.chunk())
                {
                    let refused = tonic::Status::with_error_details(
                        tonic::Code::InvalidArgument,
                        "invalid argument: request: a unary call carries exactly one message",
                        ErrorDetails::with_bad_request_violation(
                            "request",
                            "a unary call carries exactly one message",
                        ),
                    );
                    return Poll::Ready(Some(Err(Box::new(refused))));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(status: &str, message: &str) -> Response<tonic::body::Body> {
        let mut response = Response::new(tonic::body::Body::empty());
        response
            .headers_mut()
            .insert("grpc-status", HeaderValue::from_str(status).unwrap());
        response
            .headers_mut()
            .insert("grpc-message", HeaderValue::from_str(message).unwrap());
        response
    }

    #[test]
    fn framing_errors_become_the_callers_mistake() {
        let mut inflated = answered(
            "8",
            "Error%20decompressing:%20size%20limit,%20of%201024%20bytes,%20exceeded%20while%20decompressing%20message",
        );
        remap(&mut inflated, "/a.B/C");
        assert_eq!(inflated.headers()["grpc-status"], "11");
        let mut missing = answered("13", "Missing%20request%20message.");
        remap(&mut missing, "/a.B/C");
        assert_eq!(missing.headers()["grpc-status"], "3");
        let mut ours = answered("13", "internal%20error:%20a%20bug");
        remap(&mut ours, "/a.B/C");
        assert_eq!(
            ours.headers()["grpc-status"],
            "13",
            "our own INTERNAL stays"
        );
    }
}
