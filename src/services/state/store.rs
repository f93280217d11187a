//! What a state store does; the memory and Redis stores implement it.
//! Stores name their own keys: handlers pass collections, caller keys and
//! lock names only.

use std::sync::Arc;

use async_trait::async_trait;

use super::{
    Acquire, Changes, DeleteOutcome, Doc, Increment, KeyRange, PutOp, PutOutcome,
    memory::MemoryState, redis::RedisState,
};
use crate::keys::Tenant;
use crate::store::{Backend, StoreError};

/// Per-call bounds the store enforces atomically with the write.
#[derive(Debug, Clone, Copy)]
pub struct WriteLimits {
    pub max_docs: u64,
    pub max_log_entries: u64,
}

#[async_trait]
pub trait Store: Send + Sync {
    async fn put(
        &self,
        tenant: &Tenant,
        collection: &str,
        op: &PutOp,
        limits: WriteLimits,
    ) -> Result<PutOutcome, StoreError>;
    async fn get_many(
        &self,
        tenant: &Tenant,
        collection: &str,
        keys: &[String],
    ) -> Result<Vec<Option<Doc>>, StoreError>;
    async fn delete(
        &self,
        tenant: &Tenant,
        collection: &str,
        key: &str,
        expected_version: Option<u64>,
        limits: WriteLimits,
    ) -> Result<DeleteOutcome, StoreError>;
    /// Up to `limit` + 1 live keys of `range`, in order (one more tells
    /// there are more).
    async fn list(
        &self,
        tenant: &Tenant,
        collection: &str,
        range: &KeyRange,
        limit: usize,
    ) -> Result<Vec<String>, StoreError>;
    async fn count(&self, tenant: &Tenant, collection: &str) -> Result<u64, StoreError>;
    /// The changes after `cursor` (at most `max`), or, with none, where the
    /// log stands now.
    async fn changes(
        &self,
        tenant: &Tenant,
        collection: &str,
        cursor: Option<&str>,
        max: usize,
    ) -> Result<Changes, StoreError>;
    /// `(applied, value after)`.
    async fn increment(
        &self,
        tenant: &Tenant,
        collection: &str,
        key: &str,
        inc: Increment,
    ) -> Result<(bool, i64), StoreError>;
    async fn counters(
        &self,
        tenant: &Tenant,
        collection: &str,
        keys: &[String],
    ) -> Result<Vec<i64>, StoreError>;
    async fn acquire_lock(
        &self,
        tenant: &Tenant,
        name: &str,
        lease_id: &str,
        ttl_ms: u64,
    ) -> Result<Acquire, StoreError>;
    /// The lease's fencing token if it still holds the lock (now renewed).
    async fn renew_lock(
        &self,
        tenant: &Tenant,
        name: &str,
        lease_id: &str,
        ttl_ms: u64,
    ) -> Result<Option<u64>, StoreError>;
    /// Whether the lease held the lock (and now no longer does).
    async fn release_lock(
        &self,
        tenant: &Tenant,
        name: &str,
        lease_id: &str,
    ) -> Result<bool, StoreError>;
}

/// The store on the application's backend.
pub fn build(backend: &Backend) -> Arc<dyn Store> {
    match backend {
        Backend::Memory(memory) => MemoryState::new(memory),
        Backend::Redis(redis) => Arc::new(RedisState::new(redis.clone())),
    }
}
