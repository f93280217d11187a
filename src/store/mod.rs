//! Storage behind one trait per capability, with two implementations chosen
//! at start-up: [`redis::RedisStore`] when `redis.url` is set, otherwise
//! [`memory::MemoryStore`] (per process, for development and tests).

pub mod memory;
pub mod redis;

use std::sync::Arc;

use async_trait::async_trait;

use crate::ratelimit::{Decision, RateCheck};

/// Why the store could not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Unreachable, too slow, or refusing for now: the caller may retry.
    #[error("{0}")]
    Unavailable(String),
    /// The store answered something we cannot read: a bug on our side.
    #[error("{0}")]
    Internal(String),
}

/// Liveness of the backing store, polled by the health probe.
#[async_trait]
pub trait StoreHealth: Send + Sync {
    async fn ping(&self) -> Result<(), StoreError>;
}

#[async_trait]
pub trait RateLimitStore: Send + Sync {
    /// Applies independent checks atomically each, answered in order.
    async fn check(&self, checks: &[RateCheck]) -> Result<Vec<Decision>, StoreError>;
    /// Forgets the state behind `key`.
    async fn reset(&self, key: &str) -> Result<(), StoreError>;
}

/// The capabilities of one backing store, shared by all services.
#[derive(Clone)]
pub struct Stores {
    pub kind: &'static str,
    pub health: Arc<dyn StoreHealth>,
    pub ratelimit: Arc<dyn RateLimitStore>,
}

impl Stores {
    pub fn memory(store: Arc<memory::MemoryStore>) -> Self {
        Self {
            kind: "memory",
            health: store.clone(),
            ratelimit: store,
        }
    }

    pub fn redis(store: Arc<redis::RedisStore>) -> Self {
        Self {
            kind: "redis",
            health: store.clone(),
            ratelimit: store,
        }
    }
}
