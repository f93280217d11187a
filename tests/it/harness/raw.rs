//! A raw HTTP/2 client, for requests no gRPC client would send: bodies that
//! are not protobuf, two messages in a unary call, no message at all, a
//! body that never ends, another content type.

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};

type Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

/// The answer as raw parts: HTTP status, gRPC status and message (from the
/// headers or the trailers), and the headers.
#[derive(Debug)]
pub struct Answer {
    pub http: u16,
    pub grpc_status: Option<i32>,
    pub grpc_message: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

#[derive(Clone)]
pub struct Raw {
    sender: SendRequest<Body>,
}

/// One gRPC frame: flag (0 plain, 1 compressed), length, message.
pub fn frame(compressed: bool, message: &[u8]) -> Vec<u8> {
    let mut out = vec![u8::from(compressed)];
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Self {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connects");
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .expect("an HTTP/2 handshake");
        tokio::spawn(connection);
        Self { sender }
    }

    fn request(path: &str, headers: &[(&str, &str)], body: Body) -> Request<Body> {
        let mut request = Request::post(format!("http://test{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(body)
            .expect("a request");
        for (name, value) in headers {
            request.headers_mut().insert(
                http::HeaderName::from_bytes(name.as_bytes()).expect("a header name"),
                http::HeaderValue::from_str(value).expect("a header value"),
            );
        }
        request
    }

    /// Sends `body` as is to `path`.
    pub async fn call(&mut self, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Answer {
        let body = Full::new(Bytes::from(body)).boxed();
        let response = self
            .sender
            .send_request(Self::request(path, headers, body))
            .await
            .expect("an answer");
        read(response).await
    }

    /// Sends the first bytes of a body that never ends.
    pub async fn call_unending(&mut self, path: &str, first: Vec<u8>) -> Answer {
        let (tx, rx) = tokio::sync::mpsc::channel::<
            Result<http_body::Frame<Bytes>, std::convert::Infallible>,
        >(1);
        tx.send(Ok(http_body::Frame::data(Bytes::from(first))))
            .await
            .expect("queued");
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let body = StreamBody::new(stream).boxed();
        let response = self
            .sender
            .send_request(Self::request(path, &[], body))
            .await
            .expect("an answer");
        let answer = read(response).await;
        drop(tx);
        answer
    }
}

async fn read(response: Response<hyper::body::Incoming>) -> Answer {
    let (parts, body) = response.into_parts();
    let collected = tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .expect("the answer ends")
        .expect("a body");
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let field = |name: &str| {
        parts
            .headers
            .get(name)
            .or_else(|| trailers.get(name))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    Answer {
        http: parts.status.as_u16(),
        grpc_status: field("grpc-status").and_then(|s| s.parse().ok()),
        grpc_message: field("grpc-message").unwrap_or_default(),
        headers: parts.headers.clone(),
        body: collected.to_bytes(),
    }
}
