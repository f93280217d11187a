//! What a request got wrong, answered as the caller's mistake:
//!
//! * a unary request must carry exactly one message ([`OneMessage`]);
//! * a request the codec could not read is `INVALID_ARGUMENT` (never
//!   `INTERNAL`), counted under its method and logged at debug; a message
//!   over the size limit is `OUT_OF_RANGE`, compressed or not ([`remap`]).

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Buf, Bytes};
use http::{HeaderValue, Response};
use http_body::{Body, Frame};
use tonic_types::{ErrorDetails, StatusExt};

use crate::grpc::codec::DECODE_ERROR_MARK;

pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The codec and tonic's framing report what a request got wrong as
/// INTERNAL or RESOURCE_EXHAUSTED; these are the caller's mistakes.
pub(super) fn remap(response: &mut Response<tonic::body::Body>, path: &str) {
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
    pub(super) fn new(inner: hyper::body::Incoming, unary: bool) -> Self {
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
