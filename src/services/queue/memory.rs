//! Queues in process memory: the state machine of `lua/`, step for step,
//! one state per tenant under one lock (as one script sees its slot).

mod admin;
mod settle;
mod state;

use std::sync::Arc;

use async_trait::async_trait;

use self::state::{QueueState, TenantQueues};
use super::store::{Limits, Store, StoredSchedule};
use super::{Dead, Enqueued, LeaseCheck, Leased, NewMessage, Stats};
use crate::keys::Tenant;
use crate::store::StoreError;
use crate::store::memory::{Memory, PerTenant};

pub struct MemoryQueues {
    memory: Arc<Memory>,
    state: Arc<PerTenant<TenantQueues>>,
}

impl MemoryQueues {
    pub fn new(memory: &Arc<Memory>) -> Arc<Self> {
        Arc::new(Self {
            memory: memory.clone(),
            state: memory.tenant_state(),
        })
    }

    fn now(&self) -> u64 {
        self.memory.now_us() / 1000
    }

    fn with<R>(
        &self,
        tenant: &Tenant,
        queue: &str,
        f: impl FnOnce(&mut QueueState, u64) -> R,
    ) -> R {
        let now = self.now();
        self.state.with(tenant, |t| {
            f(t.queues.entry(queue.to_owned()).or_default(), now)
        })
    }
}

#[async_trait]
impl Store for MemoryQueues {
    async fn now_ms(&self) -> Result<u64, StoreError> {
        Ok(self.now())
    }

    async fn enqueue(
        &self,
        tenant: &Tenant,
        queue: &str,
        messages: &[NewMessage],
        limits: Limits,
    ) -> Result<Vec<Enqueued>, StoreError> {
        Ok(self.with(tenant, queue, |q, now| {
            messages
                .iter()
                .map(|m| q.enqueue(m, now, limits.max_messages))
                .collect()
        }))
    }

    async fn lease(
        &self,
        tenant: &Tenant,
        queue: &str,
        max: usize,
        lease_ms: Option<u64>,
        seeds: &[String],
        random: f64,
    ) -> Result<Leased, StoreError> {
        Ok(self.with(tenant, queue, |q, now| {
            q.lease(max, lease_ms, seeds, random, now)
        }))
    }

    async fn ack_many(
        &self,
        tenant: &Tenant,
        queue: &str,
        acks: &[(String, String)],
        limits: Limits,
    ) -> Result<Vec<LeaseCheck<()>>, StoreError> {
        Ok(self.with(tenant, queue, |q, now| {
            acks.iter()
                .map(|(id, token)| q.ack(id, token, now, limits.done_retention_ms))
                .collect()
        }))
    }

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
    ) -> Result<LeaseCheck<bool>, StoreError> {
        Ok(self.with(tenant, queue, |q, now| {
            q.nack(id, token, retry_after_ms, dead, reason, random, now)
        }))
    }

    async fn give_back(
        &self,
        tenant: &Tenant,
        queue: &str,
        given: &[(String, String)],
    ) -> Result<u64, StoreError> {
        Ok(self.with(tenant, queue, |q, _| {
            given
                .iter()
                .filter(|(id, token)| q.give_back(id, token))
                .count() as u64
        }))
    }

    async fn extend(
        &self,
        tenant: &Tenant,
        queue: &str,
        id: &str,
        token: &str,
        lease_ms: u64,
    ) -> Result<LeaseCheck<u64>, StoreError> {
        Ok(self.with(tenant, queue, |q, now| q.extend(id, token, lease_ms, now)))
    }

    async fn cancel(&self, tenant: &Tenant, queue: &str, id: &str) -> Result<bool, StoreError> {
        Ok(self.with(tenant, queue, |q, now| q.cancel(id, now)))
    }

    async fn list_dead(
        &self,
        tenant: &Tenant,
        queue: &str,
        cursor: u64,
        limit: usize,
    ) -> Result<Vec<Dead>, StoreError> {
        Ok(self.with(tenant, queue, |q, _| q.list_dead(cursor, limit)))
    }

    async fn redrive(
        &self,
        tenant: &Tenant,
        queue: &str,
        ids: &[String],
        limit: usize,
    ) -> Result<u64, StoreError> {
        Ok(self.with(tenant, queue, |q, now| q.redrive(ids, limit, now)))
    }

    async fn purge(
        &self,
        tenant: &Tenant,
        queue: &str,
        ids: &[String],
        limit: usize,
    ) -> Result<u64, StoreError> {
        Ok(self.with(tenant, queue, |q, _| q.purge(ids, limit)))
    }

    async fn set_paused(
        &self,
        tenant: &Tenant,
        queue: &str,
        paused: bool,
    ) -> Result<(), StoreError> {
        self.with(tenant, queue, |q, _| q.paused = paused);
        Ok(())
    }

    async fn stats(&self, tenant: &Tenant, queue: &str) -> Result<Stats, StoreError> {
        Ok(self.with(tenant, queue, |q, now| q.stats(now)))
    }

    async fn put_schedule(
        &self,
        tenant: &Tenant,
        queue: &str,
        schedule: &StoredSchedule,
        max: usize,
    ) -> Result<bool, StoreError> {
        Ok(self
            .state
            .with(tenant, |t| t.put_schedule(queue, schedule, max)))
    }

    async fn delete_schedule(
        &self,
        tenant: &Tenant,
        queue: &str,
        id: &str,
    ) -> Result<bool, StoreError> {
        Ok(self.with(tenant, queue, |q, _| q.schedules.remove(id).is_some()))
    }

    async fn schedules(
        &self,
        tenant: &Tenant,
        queue: &str,
    ) -> Result<Vec<StoredSchedule>, StoreError> {
        Ok(self.with(tenant, queue, |q, _| q.schedule_list()))
    }

    async fn scheduled_queues(&self, tenant: &Tenant) -> Result<Vec<String>, StoreError> {
        Ok(self
            .state
            .with(tenant, |t| t.scheduled.iter().cloned().collect()))
    }

    async fn fire(
        &self,
        tenant: &Tenant,
        queue: &str,
        id: &str,
        expected_next_ms: u64,
        next_ms: u64,
        message: &NewMessage,
        limits: Limits,
    ) -> Result<bool, StoreError> {
        Ok(self.with(tenant, queue, |q, now| {
            q.fire(id, expected_next_ms, next_ms, message, limits, now)
        }))
    }
}
