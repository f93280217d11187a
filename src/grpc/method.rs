//! A gRPC method as the call path sees it: its names, its class (read,
//! audited), its metric handles and its failure-log limiter. One per
//! method, made once (the service macros keep it in a `static`).

use std::sync::{
    OnceLock,
    atomic::{AtomicU64, Ordering},
};

use tonic::Code;

use crate::metrics as m;

/// A gRPC method, named from the generated `SERVICE_NAME`.
#[derive(Debug)]
pub struct Method {
    /// `datalayer.ratelimit.v1.RateLimitService`
    pub service: &'static str,
    /// `Check`
    pub method: &'static str,
    /// `datalayer.ratelimit.v1.RateLimitService/Check`, the span name.
    pub full: &'static str,
    /// Administrative: every call is recorded in the audit log.
    pub audited: bool,
    /// Only reads: safe to retry whatever happened.
    pub read: bool,
    pub(super) failures: LogLimiter,
    /// Its metric handles, looked up once rather than per call (a lookup
    /// hashes and allocates the labels).
    requests: [OnceLock<metrics::Counter>; 17],
    duration: OnceLock<metrics::Histogram>,
}

impl Method {
    /// Made once per method (the service macros keep it in a `static`).
    pub fn new(service: &'static str, method: &'static str) -> Self {
        Self {
            service,
            method,
            full: Box::leak(format!("{service}/{method}").into_boxed_str()),
            audited: crate::access::classify(service, method) == crate::access::Access::Admin,
            read: crate::access::classify(service, method) == crate::access::Access::Read,
            failures: LogLimiter::default(),
            requests: Default::default(),
            duration: OnceLock::new(),
        }
    }

    pub(super) fn requests(&self, code: Code) -> &metrics::Counter {
        self.requests[(code as usize).min(16)].get_or_init(|| {
            metrics::counter!(
                m::RPC_REQUESTS,
                "service" => self.service,
                "method" => self.method,
                "code" => m::code_label(code),
            )
        })
    }

    pub(super) fn duration(&self) -> &metrics::Histogram {
        self.duration.get_or_init(|| {
            metrics::histogram!(
                m::RPC_DURATION,
                "service" => self.service,
                "method" => self.method,
            )
        })
    }
}

/// At most one failure line per second per method; the rest are counted
/// into the next line, so an outage does not write a line per call.
#[derive(Debug, Default)]
pub(super) struct LogLimiter {
    last_second: AtomicU64,
    suppressed: AtomicU64,
}

impl LogLimiter {
    /// `Some(suppressed since the last line)` when a line may be written.
    pub(super) fn admit(&self) -> Option<u64> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let last = self.last_second.load(Ordering::Relaxed);
        if last != now
            && self
                .last_second
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}
