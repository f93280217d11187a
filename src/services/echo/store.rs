use std::sync::Arc;

use async_trait::async_trait;

use crate::keys::Tenant;
use crate::store::{Backend, StoreError};

#[async_trait]
pub trait Store: Send + Sync {
    /// Counts one more saying of `text`; how many within the memory.
    async fn say(&self, tenant: &Tenant, text: &str) -> Result<u64, StoreError>;
}

pub fn build(backend: &Backend) -> Arc<dyn Store> {
    match backend {
        Backend::Memory(memory) => super::memory::MemoryEcho::new(memory),
        Backend::Redis(redis) => Arc::new(super::redis::RedisEcho(redis.clone())),
    }
}
