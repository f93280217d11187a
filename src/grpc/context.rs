//! What a handler knows about its call: the tenant whose keys it may touch
//! and the deadline, with the one rule for waiting on the store.

use std::{
    future::Future,
    sync::{Arc, OnceLock},
    time::Duration,
};

use tokio::time::Instant;

use crate::error::Error;
use crate::keys::Tenant;
use crate::store::StoreError;

/// Deadline policy: the caller's `grpc-timeout`, or the configured default,
/// never more than the configured maximum; and how long the store may take.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// `server.default_timeout`
    pub default: Duration,
    /// `server.max_timeout`
    pub max: Duration,
    /// `redis.command_timeout`: past it the store counts as unavailable.
    pub store: Duration,
}

impl Deadlines {
    /// The call's timeout from its `grpc-timeout` header, if it has one.
    pub fn for_metadata(&self, metadata: &tonic::metadata::MetadataMap) -> Duration {
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
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
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

/// One call's context.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// Whose keys this call reads and writes.
    pub tenant: Tenant,
    deadline: Instant,
    store_timeout: Duration,
    /// The request's metadata (moved, not copied, from the request).
    metadata: tonic::metadata::MetadataMap,
    /// Who calls: a key id, `cert:<common name>`, or `anonymous`.
    principal: Arc<str>,
    /// What an administrative call acted on, for its audit event.
    audit_target: Arc<OnceLock<String>>,
}

impl Ctx {
    pub fn new(tenant: Tenant, timeout: Duration, store_timeout: Duration) -> Self {
        Self::with_metadata(tenant, timeout, store_timeout, Default::default())
    }

    pub fn with_metadata(
        tenant: Tenant,
        timeout: Duration,
        store_timeout: Duration,
        metadata: tonic::metadata::MetadataMap,
    ) -> Self {
        Self {
            tenant,
            deadline: Instant::now() + timeout,
            store_timeout,
            metadata,
            principal: Arc::from("anonymous"),
            audit_target: Arc::default(),
        }
    }

    /// The same call's context with a new deadline `timeout` from now: for
    /// the store reads a long-lived stream makes after its set-up.
    pub fn renewed(&self, timeout: Duration) -> Ctx {
        let mut ctx = self.clone();
        ctx.deadline = Instant::now() + timeout;
        ctx
    }

    /// The same context acting as `principal`.
    pub fn with_principal(mut self, principal: Arc<str>) -> Self {
        self.principal = principal;
        self
    }

    /// Who calls: a key id, `cert:<common name>`, or `anonymous`.
    pub fn principal(&self) -> &Arc<str> {
        &self.principal
    }

    /// Names what this (administrative) call acts on, for its audit event:
    /// a flag, a rate-limit key, a user's sessions. Never a secret.
    pub fn audit_target(&self, target: impl Into<String>) {
        let _ = self.audit_target.set(target.into());
    }

    /// Where the handler's audit target lands (read after the call).
    pub(crate) fn audit_slot(&self) -> Arc<OnceLock<String>> {
        self.audit_target.clone()
    }

    /// A request header as text, if it was sent and is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.metadata.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// How long one store operation may take (`redis.command_timeout`):
    /// what a stream's later store reads, past the call's set-up, are
    /// bounded by.
    pub fn store_timeout(&self) -> Duration {
        self.store_timeout
    }

    /// Awaits a store operation.
    ///
    /// Only the *store* failing makes it unavailable: an error from it, or
    /// no answer within `redis.command_timeout`. When the caller's deadline
    /// comes first the answer is `DEADLINE_EXCEEDED` — never the fail-open
    /// or "store down" answer a caller could otherwise trigger at will —
    /// and a deadline that has already passed sends nothing to the store.
    pub async fn store<T>(
        &self,
        op: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, Error> {
        let now = Instant::now();
        if now >= self.deadline {
            return Err(Error::DeadlineExceeded);
        }
        let store_deadline = now + self.store_timeout;
        if self.deadline <= store_deadline {
            match tokio::time::timeout_at(self.deadline, op).await {
                Ok(result) => result.map_err(Error::Store),
                Err(_) => Err(Error::DeadlineExceeded),
            }
        } else {
            match tokio::time::timeout_at(store_deadline, op).await {
                Ok(result) => result.map_err(Error::Store),
                Err(_) => Err(Error::Store(
                    StoreError::unavailable(format!(
                        "the store did not answer within {} (redis.command_timeout)",
                        crate::validate::duration(self.store_timeout)
                    ))
                    .maybe_applied(),
                )),
            }
        }
    }
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

    fn tenant() -> Tenant {
        Tenant::parse("t").unwrap()
    }

    #[tokio::test]
    async fn a_short_caller_deadline_is_deadline_exceeded_never_unavailable() {
        let ctx = Ctx::new(tenant(), Duration::from_millis(5), Duration::from_secs(1));
        let slow = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok::<_, StoreError>(())
        };
        assert!(matches!(
            ctx.store(slow).await,
            Err(Error::DeadlineExceeded)
        ));
    }

    #[tokio::test]
    async fn a_slow_store_is_unavailable() {
        let ctx = Ctx::new(tenant(), Duration::from_secs(1), Duration::from_millis(5));
        let slow = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok::<_, StoreError>(())
        };
        match ctx.store(slow).await {
            Err(Error::Store(e)) => assert!(e.is_unavailable()),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_passed_deadline_sends_nothing() {
        let ctx = Ctx::new(tenant(), Duration::ZERO, Duration::from_secs(1));
        let sent = std::sync::atomic::AtomicBool::new(false);
        let op = async {
            sent.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok::<_, StoreError>(())
        };
        assert!(matches!(ctx.store(op).await, Err(Error::DeadlineExceeded)));
        assert!(!sent.load(std::sync::atomic::Ordering::SeqCst));
    }
}
