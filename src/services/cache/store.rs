//! What a cache store does; the memory and Redis stores implement it.
//! Stores name their own keys: handlers pass caller keys and tags only.

use std::sync::Arc;

use async_trait::async_trait;

use super::{Found, LeaseResult, SetOp, SetResult, memory::MemoryCache, redis::RedisCache};
use crate::keys::Tenant;
use crate::store::{Backend, StoreError};

#[async_trait]
pub trait Store: Send + Sync {
    async fn get_many(
        &self,
        tenant: &Tenant,
        keys: &[String],
    ) -> Result<Vec<Option<Found>>, StoreError>;
    async fn set_many(&self, tenant: &Tenant, ops: &[SetOp]) -> Result<Vec<SetResult>, StoreError>;
    /// Deletes the entry and its lease; true if an entry was there.
    async fn delete(&self, tenant: &Tenant, key: &str) -> Result<bool, StoreError>;
    /// Deletes every entry carrying any of `tags`; returns how many.
    async fn invalidate_tags(&self, tenant: &Tenant, tags: &[String]) -> Result<u64, StoreError>;
    /// Hit, or a lease granted under `new_token`, or stale, or wait.
    async fn get_or_lease(
        &self,
        tenant: &Tenant,
        key: &str,
        lease_ttl_us: u64,
        new_token: &str,
    ) -> Result<LeaseResult, StoreError>;
}

/// The store on the application's backend.
pub fn build(backend: &Backend) -> Arc<dyn Store> {
    match backend {
        Backend::Memory(memory) => MemoryCache::new(memory),
        Backend::Redis(redis) => Arc::new(RedisCache::new(redis.clone())),
    }
}
