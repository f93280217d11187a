//! What every service's storage shares. Each service declares its own store
//! trait in `services/<name>/store.rs` and implements it twice, on the two
//! backends here:
//!
//! * [`memory::Memory`]: the in-process default (no `redis.url`), with a
//!   clock tests can move and one sweeper for every service's expired state;
//! * [`redis::Redis`]: one pooled, pipelined connection to Redis (standalone,
//!   TLS or Cluster) and the script machinery.
//!
//! [`StoreError`] is the one error of every store; its [`StoreErrorKind`]
//! decides how a caller is answered (retry, or not).

pub mod memory;
pub mod redis;

use std::sync::Arc;

/// How a store failed, which decides the answer a caller gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// Unreachable, too slow, overloaded or restarting: retrying may work.
    Unavailable,
    /// Out of memory: writes are refused until memory is freed or raised.
    Full,
    /// Refusing until an operator acts: a read-only replica, a wrong
    /// password, an unknown database, a missing permission.
    Misconfigured,
    /// It answered something we cannot read: a bug on our side.
    Internal,
}

impl StoreErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreErrorKind::Unavailable => "unavailable",
            StoreErrorKind::Full => "full",
            StoreErrorKind::Misconfigured => "misconfigured",
            StoreErrorKind::Internal => "internal",
        }
    }
}

/// Why the store could not answer, with the error that caused it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    pub kind: StoreErrorKind,
    /// The command may have been applied: it was sent and no answer came
    /// (a timeout, a connection lost mid-call). A write that failed so
    /// must not be retried blindly.
    pub outcome_unknown: bool,
    message: String,
    #[source]
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl StoreError {
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            outcome_unknown: false,
            message: message.into(),
            source: None,
        }
    }

    /// The same error, marked: the command may have been applied.
    pub fn maybe_applied(mut self) -> Self {
        self.outcome_unknown = true;
        self
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::Unavailable, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::Internal, message)
    }

    /// Keeps `source` as the cause (logs print the chain).
    pub fn caused_by(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// A store that may answer if asked again soon.
    pub fn is_unavailable(&self) -> bool {
        self.kind == StoreErrorKind::Unavailable
    }
}

/// Occupancy of a connection pool, for metrics.
#[derive(Debug, Clone, Copy)]
pub struct PoolStatus {
    pub size: usize,
    pub in_use: usize,
    pub waiting: usize,
}

/// The backing store every service's store is built on, chosen at start-up.
#[derive(Clone)]
pub enum Backend {
    Memory(Arc<memory::Memory>),
    Redis(Arc<redis::Redis>),
}

impl Backend {
    /// `memory` or `redis`, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Backend::Memory(_) => "memory",
            Backend::Redis(_) => "redis",
        }
    }

    /// Whether the store can serve reads and writes now (the health probe).
    pub async fn probe(&self) -> Result<(), StoreError> {
        match self {
            Backend::Memory(_) => Ok(()),
            Backend::Redis(redis) => redis.probe().await,
        }
    }

    /// The connection pool's occupancy, where there is a pool.
    pub fn pool_status(&self) -> Option<PoolStatus> {
        match self {
            Backend::Memory(_) => None,
            Backend::Redis(redis) => redis.pool_status(),
        }
    }
}
