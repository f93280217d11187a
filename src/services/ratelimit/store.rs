//! What a rate-limit store does; the memory and Redis stores implement it.

use std::sync::Arc;

use async_trait::async_trait;

use super::{Decision, Limited, RateCheck, memory::MemoryRateLimits, redis::RedisRateLimits};
use crate::keys::Tenant;
use crate::store::{Backend, StoreError};

#[async_trait]
pub trait Store: Send + Sync {
    /// Applies independent checks, each atomically, answered in order.
    async fn check(
        &self,
        tenant: &Tenant,
        checks: &[RateCheck],
    ) -> Result<Vec<Decision>, StoreError>;
    /// Forgets the state behind `target`.
    async fn reset(&self, tenant: &Tenant, target: &Limited) -> Result<(), StoreError>;
}

/// The store on the application's backend.
pub fn build(backend: &Backend) -> Arc<dyn Store> {
    match backend {
        Backend::Memory(memory) => MemoryRateLimits::new(memory),
        Backend::Redis(redis) => Arc::new(RedisRateLimits::new(redis.clone())),
    }
}

/// The key of a target's state: one per (caller key, scope, algorithm).
pub(super) fn state_key(tenant: &Tenant, target: &Limited) -> String {
    let scope = match &target.scope {
        super::Scope::Inline => std::borrow::Cow::Borrowed("inline"),
        super::Scope::Policy(name) => std::borrow::Cow::Owned(format!("p={name}")),
    };
    crate::keys::key(
        tenant,
        super::SPACE,
        &target.key,
        &[&scope, target.limit.algorithm.as_str()],
    )
}
