//! What a topic store does; the memory and Redis stores implement it.
//! Handlers and the hub pass topic names and ids; stores name their keys.

use std::sync::Arc;

use async_trait::async_trait;

use super::{GroupRead, Msg, MsgId, NewMsg, Read, Retention, Stats};
use crate::keys::Tenant;
use crate::store::{Backend, StoreError};

#[async_trait]
pub trait Store: Send + Sync {
    /// Appends `msgs` in order, trims to `retention`; their ids.
    async fn publish(
        &self,
        tenant: &Tenant,
        topic: &str,
        msgs: &[NewMsg],
        retention: Retention,
    ) -> Result<Vec<MsgId>, StoreError>;
    /// Up to `count` messages after `after`.
    async fn read(
        &self,
        tenant: &Tenant,
        topic: &str,
        after: MsgId,
        count: usize,
    ) -> Result<Read, StoreError>;
    /// The newest id (zero for an empty or absent topic).
    async fn last_id(&self, tenant: &Tenant, topic: &str) -> Result<MsgId, StoreError>;
    /// A group member's next messages: pending ones idle past
    /// `claim_idle_ms` first, then new ones. Makes the group if needed.
    async fn group_read(
        &self,
        tenant: &Tenant,
        topic: &str,
        read: &GroupRead,
        retention: Retention,
    ) -> Result<Vec<Msg>, StoreError>;
    /// How many of `ids` were pending in `group` (now acknowledged).
    async fn ack(
        &self,
        tenant: &Tenant,
        topic: &str,
        group: &str,
        ids: &[MsgId],
    ) -> Result<u64, StoreError>;
    async fn stats(&self, tenant: &Tenant, topic: &str) -> Result<Option<Stats>, StoreError>;
    async fn delete(&self, tenant: &Tenant, topic: &str) -> Result<bool, StoreError>;
}

pub fn build(backend: &Backend) -> Arc<dyn Store> {
    match backend {
        Backend::Memory(memory) => super::memory::MemoryTopics::new(memory),
        Backend::Redis(redis) => Arc::new(super::redis::RedisTopics(redis.clone())),
    }
}
