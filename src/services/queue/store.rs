//! What a queue store does; the memory and Redis stores implement it.
//! Every method is one atomic step on one queue. Times come from the
//! store's clock (Redis `TIME`), so replicas with skewed clocks agree.

use std::sync::Arc;

use async_trait::async_trait;

use super::{
    Dead, Delivery, Enqueued, LeaseCheck, Leased, NewMessage, Stats, memory::MemoryQueues,
    redis::RedisQueues,
};
use crate::keys::Tenant;
use crate::store::{Backend, StoreError};

/// Bounds the store applies with the write.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_messages: u64,
    pub done_retention_ms: u64,
}

/// A schedule as stored: its definition (JSON, the service's own) and
/// when it next fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSchedule {
    pub id: String,
    pub definition: String,
    pub next_ms: u64,
}

#[async_trait]
pub trait Store: Send + Sync {
    /// The store's clock, in ms since the epoch.
    async fn now_ms(&self) -> Result<u64, StoreError>;
    async fn enqueue(
        &self,
        tenant: &Tenant,
        queue: &str,
        messages: &[NewMessage],
        limits: Limits,
    ) -> Result<Vec<Enqueued>, StoreError>;
    /// Up to `max` ready messages, each under a new lease (`lease_ms`
    /// overrides each message's own); `seeds` are the random parts of the
    /// tokens, one per possible delivery; `random` draws backoff jitter for
    /// leases found expired on the way.
    async fn lease(
        &self,
        tenant: &Tenant,
        queue: &str,
        max: usize,
        lease_ms: Option<u64>,
        seeds: &[String],
        random: f64,
    ) -> Result<Leased, StoreError>;
    /// Acks (id, lease token) pairs, in one step; answers in their order.
    async fn ack_many(
        &self,
        tenant: &Tenant,
        queue: &str,
        acks: &[(String, String)],
        limits: Limits,
    ) -> Result<Vec<LeaseCheck<()>>, StoreError>;
    async fn ack(
        &self,
        tenant: &Tenant,
        queue: &str,
        id: &str,
        token: &str,
        limits: Limits,
    ) -> Result<LeaseCheck<()>, StoreError> {
        let acks = [(id.to_owned(), token.to_owned())];
        let mut answers = self.ack_many(tenant, queue, &acks, limits).await?;
        Ok(answers.pop().unwrap_or(LeaseCheck::Lost))
    }
    /// Retry after `retry_after_ms` (else the backoff) or send to the dead
    /// letters; answers whether it is dead now.
    #[allow(clippy::too_many_arguments)]
    async fn nack(
        &self,
        tenant: &Tenant,
        queue: &str,
        id: &str,
        token: &str,
        retry_after_ms: Option<u64>,
        dead: bool,
        reason: &str,
        random: f64,
    ) -> Result<LeaseCheck<bool>, StoreError>;
    /// Deliveries (id, lease token) that never reached their consumer:
    /// ready again at once, their attempt not counted. Answers how many
    /// were still under those leases.
    async fn give_back(
        &self,
        tenant: &Tenant,
        queue: &str,
        given: &[(String, String)],
    ) -> Result<u64, StoreError>;
    /// The new expiry, ms since the epoch.
    async fn extend(
        &self,
        tenant: &Tenant,
        queue: &str,
        id: &str,
        token: &str,
        lease_ms: u64,
    ) -> Result<LeaseCheck<u64>, StoreError>;
    async fn cancel(&self, tenant: &Tenant, queue: &str, id: &str) -> Result<bool, StoreError>;
    /// Dead messages after `cursor`, oldest first.
    async fn list_dead(
        &self,
        tenant: &Tenant,
        queue: &str,
        cursor: u64,
        limit: usize,
    ) -> Result<Vec<Dead>, StoreError>;
    /// Those of `ids` (or, empty, up to `limit` of all) that are dead.
    async fn redrive(
        &self,
        tenant: &Tenant,
        queue: &str,
        ids: &[String],
        limit: usize,
    ) -> Result<u64, StoreError>;
    async fn purge(
        &self,
        tenant: &Tenant,
        queue: &str,
        ids: &[String],
        limit: usize,
    ) -> Result<u64, StoreError>;
    async fn set_paused(
        &self,
        tenant: &Tenant,
        queue: &str,
        paused: bool,
    ) -> Result<(), StoreError>;
    async fn stats(&self, tenant: &Tenant, queue: &str) -> Result<Stats, StoreError>;

    async fn put_schedule(
        &self,
        tenant: &Tenant,
        queue: &str,
        schedule: &StoredSchedule,
        max: usize,
    ) -> Result<bool, StoreError>;
    async fn delete_schedule(
        &self,
        tenant: &Tenant,
        queue: &str,
        id: &str,
    ) -> Result<bool, StoreError>;
    async fn schedules(
        &self,
        tenant: &Tenant,
        queue: &str,
    ) -> Result<Vec<StoredSchedule>, StoreError>;
    /// Queues of `tenant` that have schedules.
    async fn scheduled_queues(&self, tenant: &Tenant) -> Result<Vec<String>, StoreError>;
    /// Fires one tick: if the schedule still fires at `expected_next_ms`,
    /// enqueues `message` and moves it to `next_ms` — atomically, so one
    /// replica wins each tick. Answers whether this call fired it.
    #[allow(clippy::too_many_arguments)]
    async fn fire(
        &self,
        tenant: &Tenant,
        queue: &str,
        id: &str,
        expected_next_ms: u64,
        next_ms: u64,
        message: &NewMessage,
        limits: Limits,
    ) -> Result<bool, StoreError>;
}

/// The store on the application's backend.
pub fn build(backend: &Backend) -> Arc<dyn Store> {
    match backend {
        Backend::Memory(memory) => MemoryQueues::new(memory),
        Backend::Redis(redis) => Arc::new(RedisQueues::new(redis.clone())),
    }
}

/// Unused fields of a delivery a dead message carries.
pub fn dead_delivery(delivery: Delivery) -> Delivery {
    Delivery {
        token: String::new(),
        lease_expires_ms: 0,
        ..delivery
    }
}
