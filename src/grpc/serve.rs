//! The call path every RPC shares, written once: the SERVER span (joining
//! the caller's W3C trace), the tenant and deadline ([`Ctx`]), metrics, the
//! log line of a failure, and the mapping of [`Error`] to a status.
//! [`unary`] serves one answer; [`server_stream`] serves a stream that ends
//! when the caller leaves, its `grpc-timeout` passes, or the server stops.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures::{Stream, StreamExt, stream::BoxStream};
use opentelemetry::propagation::Extractor;
use prost::Message;
use tokio::{sync::watch, time::Instant};
use tonic::{Code, Request, Response, Status, codec::SingleMessageCompressionOverride};
use tracing::{Instrument, Span, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::audited::Audit;
use super::context::{Ctx, Deadlines, parse_grpc_timeout};
pub use super::method::Method;
use super::status::code_of;
use crate::access::Principal;
use crate::audit::AuditLog;
use crate::error::Error;
use crate::keys::Tenant;
use crate::metrics as m;

/// What every handler of the application shares.
#[derive(Clone)]
pub struct Shared {
    pub deadlines: Deadlines,
    /// The tenant of a call that carries none (`keys.namespace`).
    pub default_tenant: Tenant,
    /// Turns true when the server begins to shut down: streams end.
    pub shutdown: watch::Receiver<bool>,
    /// Answers smaller than this are sent uncompressed even when the
    /// caller accepts gzip (`server.compress_min_bytes`).
    pub compress_min_bytes: usize,
    /// Where administrative calls are recorded.
    pub audit: Option<Arc<dyn AuditLog>>,
    /// The tenants known at start-up: `keys.namespace` and those of the
    /// configured keys and client certificates (for background work such
    /// as queue schedules).
    pub tenants: Arc<[Tenant]>,
}

/// A handler with what it shares: the type the generated service traits
/// are implemented for (see [`crate::grpc_service!`]).
pub struct Served<H> {
    pub handler: H,
    pub shared: Shared,
}

struct MetadataExtractor<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

fn span_for<T>(method: &Method, request: &Request<T>) -> Span {
    // Without an exporter a span would only cost: no span at all (failure
    // logs name the method themselves).
    if !crate::telemetry::traces_exported() {
        return Span::none();
    }
    let span = tracing::info_span!(
        "rpc",
        otel.name = method.full,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = method.service,
        rpc.method = method.method,
        rpc.grpc.status_code = Empty,
        otel.status_code = Empty,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&MetadataExtractor(request.metadata()))
    });
    // Fails only when no OpenTelemetry layer is installed: nothing to join.
    let _ = span.set_parent(parent);
    span
}

/// The call's context and message, taking the request apart.
fn context<T>(shared: &Shared, request: Request<T>, timeout: Duration) -> (Ctx, T) {
    let (metadata, extensions, message) = request.into_parts();
    let (tenant, principal) = match extensions.get::<Principal>() {
        Some(p) => (p.tenant.clone(), p.id.clone()),
        None => (
            extensions
                .get::<Tenant>()
                .cloned()
                .unwrap_or_else(|| shared.default_tenant.clone()),
            Arc::from("anonymous"),
        ),
    };
    let ctx = Ctx::with_metadata(tenant, timeout, shared.deadlines.store, metadata)
        .with_principal(principal);
    (ctx, message)
}

/// Counts and logs the end of a call.
fn finish(
    method: &'static Method,
    span: &Span,
    started: Instant,
    code: Code,
    error: Option<&Error>,
) {
    method.requests(code).increment(1);
    method.duration().record(started.elapsed().as_secs_f64());
    if !span.is_none() {
        span.record("rpc.grpc.status_code", code as i64);
    }
    match error {
        None => {}
        Some(e) if e.is_rejection() => {
            tracing::debug!(parent: span, rpc = method.full, error = %e, "rejected")
        }
        Some(e) => {
            span.record("otel.status_code", "ERROR");
            if let Some(suppressed) = method.failures.admit() {
                tracing::warn!(
                    parent: span,
                    rpc = method.full,
                    error = %e,
                    similar_failures_not_logged = suppressed,
                    "failed"
                );
            }
        }
    }
}

/// The status of a failed call. A write whose store command may have been
/// applied (a timeout, a connection lost mid-call) is UNAVAILABLE without
/// RetryInfo: clients retry only what carries it, so nothing is repeated
/// blindly. A read, or a command that never reached the store, keeps it.
fn status(method: &Method, e: Error) -> Status {
    let unknown = matches!(&e, Error::Store(s) if s.is_unavailable() && s.outcome_unknown);
    if unknown && !method.read {
        let message =
            format!("{e}; the write may have been applied: retry only if repeating it is safe");
        return Status::new(
            Code::Unavailable,
            super::status::bounded(&message, super::status::MAX_MESSAGE_CHARS),
        );
    }
    Status::from(e)
}

/// Serves one unary call: span, tenant, deadline, handler, metrics, status.
pub async fn unary<Req, Resp, Fut>(
    shared: &Shared,
    method: &'static Method,
    request: Request<Req>,
    handler: impl FnOnce(Ctx, Req) -> Fut,
) -> Result<Response<Resp>, Status>
where
    Fut: Future<Output = Result<Resp, Error>>,
    Resp: Message,
{
    let span = span_for(method, &request);
    let timeout = shared.deadlines.for_metadata(request.metadata());
    let (ctx, message) = context(shared, request, timeout);
    let deadline = ctx.deadline();
    let audit = Audit::of(method, &ctx);
    let started = Instant::now();
    let call = handler(ctx, message).instrument(span.clone());
    let result = tokio::time::timeout_at(deadline, call)
        .await
        .unwrap_or(Err(Error::DeadlineExceeded));
    let code = result.as_ref().err().map_or(Code::Ok, code_of);
    finish(method, &span, started, code, result.as_ref().err());
    if let Some(audit) = audit {
        audit.record(shared, method, code);
    }
    let answer = result.map_err(|e| status(method, e))?;
    let small = answer.encoded_len() < shared.compress_min_bytes;
    let mut response = Response::new(answer);
    if small {
        response
            .extensions_mut()
            .insert(SingleMessageCompressionOverride::Disable);
    }
    Ok(response)
}

/// A server stream as the generated traits want it.
pub type ServerStream<T> = BoxStream<'static, Result<T, Status>>;

/// Serves a server-streaming call. The handler opens the stream within the
/// call's deadline (as a unary call); the stream then runs until the caller
/// leaves, the caller's own `grpc-timeout` passes (`DEADLINE_EXCEEDED`), or
/// the server shuts down (the stream ends cleanly, so shutdown never waits
/// on subscribers).
pub async fn server_stream<Req, Item, S, Fut>(
    shared: &Shared,
    method: &'static Method,
    request: Request<Req>,
    handler: impl FnOnce(Ctx, Req) -> Fut,
) -> Result<Response<ServerStream<Item>>, Status>
where
    Fut: Future<Output = Result<S, Error>>,
    S: Stream<Item = Result<Item, Error>> + Send + 'static,
    Item: Send + 'static,
{
    let span = span_for(method, &request);
    let caller_timeout = request
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout);
    let timeout = shared.deadlines.for_metadata(request.metadata());
    let (ctx, message) = context(shared, request, timeout);
    let setup_deadline = ctx.deadline();
    let started = Instant::now();
    let opened = tokio::time::timeout_at(
        setup_deadline,
        handler(ctx, message).instrument(span.clone()),
    )
    .await
    .unwrap_or(Err(Error::DeadlineExceeded));
    let stream = match opened {
        Ok(stream) => stream,
        Err(e) => {
            finish(method, &span, started, code_of(&e), Some(&e));
            return Err(status(method, e));
        }
    };
    metrics::gauge!(m::RPC_STREAMS_ACTIVE, "service" => method.service, "method" => method.method)
        .increment(1.0);
    let guarded = Guarded {
        method,
        inner: stream.boxed(),
        deadline: caller_timeout.map(|t| Box::pin(tokio::time::sleep_until(started + t))),
        shutdown: Box::pin(wait_for_shutdown(shared.shutdown.clone())),
        end: Some(End {
            method,
            span,
            started,
            code: Code::Cancelled,
        }),
        done: false,
    };
    Ok(Response::new(guarded.boxed()))
}

async fn wait_for_shutdown(mut shutdown: watch::Receiver<bool>) {
    // An error means the sender is gone: the server has stopped too.
    let _ = shutdown.wait_for(|stopped| *stopped).await;
}

/// Records a stream's end exactly once, whichever way it ends (a caller
/// that leaves drops the stream: `CANCELLED`).
struct End {
    method: &'static Method,
    span: Span,
    started: Instant,
    code: Code,
}

impl Drop for End {
    fn drop(&mut self) {
        finish(self.method, &self.span, self.started, self.code, None);
        metrics::gauge!(
            m::RPC_STREAMS_ACTIVE,
            "service" => self.method.service,
            "method" => self.method.method
        )
        .decrement(1.0);
    }
}

struct Guarded<T> {
    method: &'static Method,
    inner: BoxStream<'static, Result<T, Error>>,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
    end: Option<End>,
    done: bool,
}

impl<T> Guarded<T> {
    fn close(&mut self, code: Code) {
        self.done = true;
        if let Some(mut end) = self.end.take() {
            end.code = code;
        }
    }
}

impl<T> Stream for Guarded<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.shutdown.as_mut().poll(cx).is_ready() {
            self.close(Code::Ok);
            return Poll::Ready(None);
        }
        if let Some(deadline) = self.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            self.close(Code::DeadlineExceeded);
            return Poll::Ready(Some(Err(Status::from(Error::DeadlineExceeded))));
        }
        match self.inner.poll_next_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(item))) => Poll::Ready(Some(Ok(item))),
            Poll::Ready(Some(Err(e))) => {
                let code = code_of(&e);
                if let Some(end) = &self.end {
                    tracing::warn!(parent: &end.span, error = %e, "stream failed");
                }
                self.close(code);
                Poll::Ready(Some(Err(status(self.method, e))))
            }
            Poll::Ready(None) => {
                self.close(Code::Ok);
                Poll::Ready(None)
            }
        }
    }
}
