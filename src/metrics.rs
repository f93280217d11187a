//! Prometheus metrics, served as text at `/metrics` on their own port
//! (`metrics.addr`), so scraping never competes with gRPC traffic.
//!
//! Code records through the `metrics` facade macros where things happen;
//! one process-wide recorder (the facade's is global) renders them. Apps
//! built in one test process therefore share counts, which only add up.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::Duration,
};

use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::{net::TcpListener, sync::watch};

crate::section! {
    /// Prometheus metrics.
    pub struct MetricsSettings {
        /// Serve Prometheus metrics at all.
        pub enabled: bool = true;
        /// Address of the `/metrics` HTTP endpoint (its own port, not
        /// gRPC's).
        pub addr: SocketAddr = SocketAddr::from(([0, 0, 0, 0], 9090));
        /// A file holding the bearer token scrapers must send
        /// (`authorization: Bearer <token>`); unset: no token needed.
        pub bearer_token_file: Option<std::path::PathBuf> = None;
    }
}

impl MetricsSettings {
    /// The scrapers' token, read once at start-up (trailing newline cut).
    pub fn bearer_token(&self) -> Result<Option<Arc<[u8]>>, String> {
        let Some(path) = &self.bearer_token_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "metrics.bearer_token_file: cannot read {}: {e}",
                path.display()
            )
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(format!(
                "metrics.bearer_token_file: {} is empty",
                path.display()
            ));
        }
        Ok(Some(Arc::from(token.as_bytes())))
    }
}

pub const RPC_REQUESTS: &str = "datalayer_rpc_requests_total";
pub const RPC_DURATION: &str = "datalayer_rpc_duration_seconds";
pub const RPC_STREAMS_ACTIVE: &str = "datalayer_rpc_streams_active";
pub const RPC_DECODE_ERRORS: &str = "datalayer_rpc_decode_errors_total";
pub const CONNECTIONS_OPEN: &str = "datalayer_connections_open";
pub const CONNECTIONS_REFUSED: &str = "datalayer_connections_refused_total";
pub const CONNECTIONS_DROPPED: &str = "datalayer_connections_dropped_total";
pub const RATELIMIT_DECISIONS: &str = "datalayer_ratelimit_decisions_total";
pub const RATELIMIT_DENIAL_CACHE: &str = "datalayer_ratelimit_denial_cache_lookups_total";
pub const FLAG_EVALUATIONS: &str = "datalayer_flag_evaluations_total";
pub const STORE_UP: &str = "datalayer_store_up";
pub const REDIS_ERRORS: &str = "datalayer_redis_errors_total";
pub const REDIS_ROUNDTRIP: &str = "datalayer_redis_roundtrip_seconds";
pub const REDIS_PIPELINE_COMMANDS: &str = "datalayer_redis_pipeline_commands";
pub const REDIS_POOL_WAIT: &str = "datalayer_redis_pool_wait_seconds";
pub const REDIS_POOL_CONNECTIONS: &str = "datalayer_redis_pool_connections";
pub const REDIS_POOL_IN_USE: &str = "datalayer_redis_pool_in_use_connections";
pub const REDIS_POOL_WAITING: &str = "datalayer_redis_pool_waiting_calls";
pub const AUTH_FAILURES: &str = "datalayer_auth_failures_total";
pub const AUTH_RELOAD_ERRORS: &str = "datalayer_auth_reload_errors_total";
pub const QUOTA_REFUSALS: &str = "datalayer_quota_refusals_total";
pub const AUDIT_EVENTS: &str = "datalayer_audit_events_total";
pub const AUDIT_DROPPED: &str = "datalayer_audit_dropped_total";
pub const TLS_RELOADS: &str = "datalayer_tls_reloads_total";
pub const QUEUE_MESSAGES: &str = "datalayer_queue_messages_total";
pub const QUEUE_SCHEDULE_FIRES: &str = "datalayer_queue_schedule_fires_total";

/// Seconds: 50 µs to 10 s, dense where calls usually land.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// Concurrent connections to the metrics endpoint.
const MAX_SCRAPES: usize = 64;

static RECORDER: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// Installs the process-wide recorder once; later calls share its handle.
pub fn recorder() -> Result<PrometheusHandle, String> {
    RECORDER
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(REDIS_PIPELINE_COMMANDS.into()),
                        BATCH_BUCKETS,
                    )
                })
                .map_err(|e| e.to_string())?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).map_err(|e| e.to_string())?;
            describe();
            Ok(handle)
        })
        .clone()
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        RPC_REQUESTS,
        "gRPC calls by service, method and status code."
    );
    describe_histogram!(
        RPC_DURATION,
        Unit::Seconds,
        "gRPC call latency in the server."
    );
    describe_gauge!(
        RPC_STREAMS_ACTIVE,
        "Server streams open now, by service and method."
    );
    describe_counter!(
        RPC_DECODE_ERRORS,
        "Requests refused because they are not valid protobuf (INVALID_ARGUMENT), by service and method."
    );
    describe_gauge!(CONNECTIONS_OPEN, "gRPC connections open now.");
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Connections closed at once because server.max_connections were open."
    );
    describe_counter!(
        CONNECTIONS_DROPPED,
        "Connections closed by the server, by reason (handshake_timeout, not_http2, idle)."
    );
    describe_counter!(
        RATELIMIT_DECISIONS,
        "Rate-limit checks by policy (`inline` for inline limits) and result."
    );
    describe_counter!(
        RATELIMIT_DENIAL_CACHE,
        "Lookups of the in-process denial cache (ratelimit.denial_cache), by result (hit: answered without Redis, miss)."
    );
    describe_counter!(
        FLAG_EVALUATIONS,
        "Flag evaluations by reason (STATIC, TARGETING_MATCH, DEFAULT, DISABLED)."
    );
    describe_gauge!(
        STORE_UP,
        "1 while the store answers the health probe, else 0."
    );
    describe_counter!(
        REDIS_ERRORS,
        "Redis failures by kind (unavailable, full, misconfigured, internal; overloaded: refused because too many calls were already waiting for Redis)."
    );
    describe_histogram!(
        REDIS_ROUNDTRIP,
        Unit::Seconds,
        "Time for one pipeline to Redis and back."
    );
    describe_histogram!(REDIS_PIPELINE_COMMANDS, "Commands carried per pipeline.");
    describe_histogram!(
        REDIS_POOL_WAIT,
        Unit::Seconds,
        "Time spent waiting for a pooled Redis connection."
    );
    describe_gauge!(REDIS_POOL_CONNECTIONS, "Connections the Redis pool holds.");
    describe_counter!(
        AUTH_FAILURES,
        "Calls refused by authentication or authorization, by reason (missing, malformed, unknown, expired, blocked, forbidden)."
    );
    describe_counter!(
        AUTH_RELOAD_ERRORS,
        "Times auth.keys_file could not be read (the keys in force stayed)."
    );
    describe_counter!(
        QUOTA_REFUSALS,
        "Calls refused by a tenant quota (RESOURCE_EXHAUSTED), by kind (rate, streams)."
    );
    describe_counter!(AUDIT_EVENTS, "Audit events recorded, by method.");
    describe_counter!(
        AUDIT_DROPPED,
        "Audit events not stored in Redis (the writer was behind or the store failed); they are still logged."
    );
    describe_counter!(
        QUEUE_MESSAGES,
        "Queue messages by event (enqueued, deduplicated, delivered, acked, nacked, lease_lost)."
    );
    describe_counter!(
        QUEUE_SCHEDULE_FIRES,
        "Schedule ticks this replica fired (each tick is fired by one replica)."
    );
    describe_counter!(
        TLS_RELOADS,
        "Times the server's TLS certificate was re-read, by outcome (ok, error)."
    );
    describe_gauge!(REDIS_POOL_IN_USE, "Pooled Redis connections in use.");
    describe_gauge!(REDIS_POOL_WAITING, "Calls waiting for a pooled connection.");
}

/// A gRPC status code as Prometheus labels usually spell it.
pub fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "Cancelled",
        C::Unknown => "Unknown",
        C::InvalidArgument => "InvalidArgument",
        C::DeadlineExceeded => "DeadlineExceeded",
        C::NotFound => "NotFound",
        C::AlreadyExists => "AlreadyExists",
        C::PermissionDenied => "PermissionDenied",
        C::ResourceExhausted => "ResourceExhausted",
        C::FailedPrecondition => "FailedPrecondition",
        C::Aborted => "Aborted",
        C::OutOfRange => "OutOfRange",
        C::Unimplemented => "Unimplemented",
        C::Internal => "Internal",
        C::Unavailable => "Unavailable",
        C::DataLoss => "DataLoss",
        C::Unauthenticated => "Unauthenticated",
    }
}

/// Sets the pool gauges (read when `/metrics` is scraped).
pub fn record_pool(size: usize, in_use: usize, waiting: usize) {
    metrics::gauge!(REDIS_POOL_CONNECTIONS).set(size as f64);
    metrics::gauge!(REDIS_POOL_IN_USE).set(in_use as f64);
    metrics::gauge!(REDIS_POOL_WAITING).set(waiting as f64);
}

/// Serves `/metrics` on `listener` until `stop` turns true; `before_render`
/// refreshes gauges that are read rather than recorded (pool occupancy).
pub async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    before_render: Arc<dyn Fn() + Send + Sync>,
    token: Option<Arc<[u8]>>,
    mut stop: watch::Receiver<bool>,
) {
    // Histograms are drained into their summaries by upkeep.
    let upkeep = {
        let handle = handle.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                handle.run_upkeep();
            }
        })
    };
    let scrapes = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => break,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        // Scrapers are few: a flood of connections is refused, not held.
        let Ok(permit) = scrapes.clone().try_acquire_owned() else {
            continue;
        };
        let (handle, before, token) = (handle.clone(), before_render.clone(), token.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let (handle, before, token) = (handle.clone(), before.clone(), token.clone());
                async move {
                    Ok::<_, Infallible>(if authorized(&req, token.as_deref()) {
                        respond(&req, &handle, before.as_ref())
                    } else {
                        unauthorized()
                    })
                }
            });
            // A scrape is one short request: no keep-alive, headers within
            // a few seconds, the whole exchange bounded.
            let connection = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(Duration::from_secs(30), connection).await;
        });
    }
    upkeep.abort();
}

/// Whether a scrape carries the configured token (compared in constant
/// time), or none is configured.
fn authorized(req: &Request<hyper::body::Incoming>, token: Option<&[u8]>) -> bool {
    use subtle::ConstantTimeEq;
    let Some(token) = token else { return true };
    req.headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .is_some_and(|sent| bool::from(sent.ct_eq(token)))
}

fn unauthorized() -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(
        b"a bearer token is required\n",
    )));
    *r.status_mut() = hyper::StatusCode::UNAUTHORIZED;
    r.headers_mut().insert(
        hyper::header::WWW_AUTHENTICATE,
        hyper::header::HeaderValue::from_static("Bearer"),
    );
    r
}

fn respond(
    req: &Request<hyper::body::Incoming>,
    handle: &PrometheusHandle,
    before_render: &(dyn Fn() + Send + Sync),
) -> Response<Full<Bytes>> {
    let mut response = if req.uri().path() == "/metrics" {
        before_render();
        let mut r = Response::new(Full::new(Bytes::from(handle.render())));
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        r
    } else {
        let mut r = Response::new(Full::new(Bytes::from_static(b"see /metrics\n")));
        *r.status_mut() = hyper::StatusCode::NOT_FOUND;
        r
    };
    response.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    response
}
