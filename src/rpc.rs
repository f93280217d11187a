//! The one path every RPC takes: a SERVER span (continuing the caller's W3C
//! trace), the call's deadline, the store budget within it, and the mapping
//! of our [`Error`] to a gRPC status. Handlers only validate, call the store
//! and map the answer.

use std::{future::Future, time::Duration};

use opentelemetry::propagation::Extractor;
use tokio::time::Instant;
use tonic::{Code, Request, Response, Status};
use tracing::{Instrument, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::error::Error;
use crate::store::StoreError;

/// A gRPC method, named as in the proto.
#[derive(Debug)]
pub struct Method {
    /// `datalayer.v1.RateLimitService`
    pub service: &'static str,
    /// `Check`
    pub method: &'static str,
    /// `datalayer.v1.RateLimitService/Check`, the span name.
    pub full: &'static str,
}

/// Declares one `static` [`Method`] per RPC of a service:
/// `methods!("datalayer.v1.CacheService": GET = "Get", SET = "Set");`
#[macro_export]
macro_rules! methods {
    ($service:literal : $($name:ident = $method:literal),+ $(,)?) => {
        $(
            static $name: $crate::rpc::Method = $crate::rpc::Method {
                service: $service,
                method: $method,
                full: concat!($service, "/", $method),
            };
        )+
    };
}

/// Deadline policy: the caller's `grpc-timeout`, or the configured default,
/// never more than the configured maximum.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    pub default: Duration,
    pub max: Duration,
}

impl Deadlines {
    fn for_metadata(&self, metadata: &tonic::metadata::MetadataMap) -> Duration {
        metadata
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .unwrap_or(self.default)
            .min(self.max)
    }
}

/// Parses the gRPC wire format of a timeout: up to 8 digits and a unit
/// (`H`, `M`, `S`, `m`, `u`, `n`).
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// What a handler knows about its call.
#[derive(Debug, Clone, Copy)]
pub struct Call {
    /// The time by which the store must have answered: a tenth of the
    /// deadline is kept back to answer (fail-open, or `UNAVAILABLE`) in time.
    store_deadline: Instant,
}

impl Call {
    fn new(timeout: Duration) -> Self {
        Self {
            store_deadline: Instant::now() + timeout - timeout / 10,
        }
    }

    /// Awaits a store operation within the call's budget.
    pub async fn store<T>(
        &self,
        op: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout_at(self.store_deadline, op).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Unavailable(
                "the store did not answer within the call's deadline".to_owned(),
            )),
        }
    }
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

fn code_of(error: &Error) -> Code {
    match error {
        Error::InvalidArgument(_) => Code::InvalidArgument,
        Error::NotFound(_) => Code::NotFound,
        Error::FailedPrecondition(_) => Code::FailedPrecondition,
        Error::Unavailable(_) => Code::Unavailable,
        Error::Internal(_) => Code::Internal,
    }
}

/// Serves one unary call: span, deadline, handler, status mapping.
pub async fn serve<Req, Resp, Fut>(
    method: &'static Method,
    deadlines: Deadlines,
    request: Request<Req>,
    handler: impl FnOnce(Req, Call) -> Fut,
) -> Result<Response<Resp>, Status>
where
    Fut: Future<Output = Result<Resp, Error>>,
{
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

    let call = Call::new(deadlines.for_metadata(request.metadata()));
    let started = Instant::now();
    let result = handler(request.into_inner(), call)
        .instrument(span.clone())
        .await;

    let code = result.as_ref().err().map_or(Code::Ok, code_of);
    metrics::counter!(
        crate::metrics::RPC_REQUESTS,
        "service" => method.service,
        "method" => method.method,
        "code" => crate::metrics::code_label(code),
    )
    .increment(1);
    metrics::histogram!(
        crate::metrics::RPC_DURATION,
        "service" => method.service,
        "method" => method.method,
    )
    .record(started.elapsed().as_secs_f64());
    span.record("rpc.grpc.status_code", code as i64);
    match &result {
        Ok(_) => {}
        Err(
            e @ (Error::InvalidArgument(_) | Error::NotFound(_) | Error::FailedPrecondition(_)),
        ) => {
            tracing::debug!(parent: &span, error = %e, "rejected");
        }
        Err(e) => {
            span.record("otel.status_code", "ERROR");
            tracing::warn!(parent: &span, error = %e, "failed");
        }
    }
    result.map(Response::new).map_err(Status::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_grpc_timeouts() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("100u"), Some(Duration::from_micros(100)));
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout("m"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
    }
}
