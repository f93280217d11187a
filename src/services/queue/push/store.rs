//! Where destinations are kept: one durable hash per tenant (queue →
//! destination JSON) at `…:qx:{push}`, which every replica's dispatcher
//! reads; the memory store keeps the same map.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use deadpool_redis::redis::{self, FromRedisValue};

use super::Destination;
use crate::keys::{self, Tenant};
use crate::services::queue::SCHEDULE_INDEX_SPACE;
use crate::store::memory::{Expiring, PerTenant};
use crate::store::redis::Redis;
use crate::store::{Backend, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    Done,
    /// The tenant has `queue.push.max_destinations` push queues.
    Full,
}

#[async_trait]
pub trait Destinations: Send + Sync {
    /// Sets (or with `None` clears) a queue's destination.
    async fn put(
        &self,
        tenant: &Tenant,
        queue: &str,
        dest: Option<&Destination>,
        most: usize,
    ) -> Result<Put, StoreError>;
    /// Every push queue of the tenant.
    async fn all(&self, tenant: &Tenant) -> Result<BTreeMap<String, Destination>, StoreError>;
    /// One queue's destination.
    async fn get(&self, tenant: &Tenant, queue: &str) -> Result<Option<Destination>, StoreError>;
}

pub fn build(backend: &Backend) -> Arc<dyn Destinations> {
    match backend {
        Backend::Memory(memory) => Arc::new(MemoryDestinations(memory.tenant_state())),
        Backend::Redis(redis) => Arc::new(RedisDestinations(redis.clone())),
    }
}

#[derive(Default)]
struct Map(BTreeMap<String, Destination>);

impl Expiring for Map {
    fn sweep(&mut self, _now_us: u64) {}

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

struct MemoryDestinations(Arc<PerTenant<Map>>);

#[async_trait]
impl Destinations for MemoryDestinations {
    async fn put(
        &self,
        tenant: &Tenant,
        queue: &str,
        dest: Option<&Destination>,
        most: usize,
    ) -> Result<Put, StoreError> {
        Ok(self.0.with(tenant, |m| match dest {
            None => {
                m.0.remove(queue);
                Put::Done
            }
            Some(_) if !m.0.contains_key(queue) && m.0.len() >= most => Put::Full,
            Some(d) => {
                m.0.insert(queue.to_owned(), d.clone());
                Put::Done
            }
        }))
    }

    async fn all(&self, tenant: &Tenant) -> Result<BTreeMap<String, Destination>, StoreError> {
        Ok(self.0.with(tenant, |m| m.0.clone()))
    }

    async fn get(&self, tenant: &Tenant, queue: &str) -> Result<Option<Destination>, StoreError> {
        Ok(self.0.with(tenant, |m| m.0.get(queue).cloned()))
    }
}

struct RedisDestinations(Arc<Redis>);

fn key(tenant: &Tenant) -> String {
    keys::key(tenant, SCHEDULE_INDEX_SPACE, "push", &[])
}

impl RedisDestinations {
    async fn one(&self, what: &'static str, cmd: redis::Cmd) -> Result<redis::Value, StoreError> {
        self.0
            .exec(what, vec![cmd])
            .await?
            .pop()
            .ok_or_else(|| StoreError::internal("no reply"))?
            .map_err(|e| StoreError::from_redis(&e))
    }
}

#[async_trait]
impl Destinations for RedisDestinations {
    async fn put(
        &self,
        tenant: &Tenant,
        queue: &str,
        dest: Option<&Destination>,
        most: usize,
    ) -> Result<Put, StoreError> {
        let Some(dest) = dest else {
            let mut del = redis::cmd("HDEL");
            del.arg(key(tenant)).arg(queue);
            self.one("HDEL queue destination", del).await?;
            return Ok(Put::Done);
        };
        let json = serde_json::to_string(dest)
            .map_err(|e| StoreError::internal(format!("destination: {e}")))?;
        let mut has = redis::cmd("HEXISTS");
        has.arg(key(tenant)).arg(queue);
        let mut len = redis::cmd("HLEN");
        len.arg(key(tenant));
        let replies = self
            .0
            .exec("HLEN queue destinations", vec![has, len])
            .await?;
        let count = |i: usize| -> Result<u64, StoreError> {
            let v = replies
                .get(i)
                .ok_or_else(|| StoreError::internal("no reply"))?
                .as_ref()
                .map_err(StoreError::from_redis)?;
            u64::from_redis_value(v.clone()).map_err(|e| StoreError::internal(e.to_string()))
        };
        // Racy by design: two concurrent new destinations may pass the cap
        // by one each; the cap bounds growth, not an exact count.
        if count(0)? == 0 && count(1)? as usize >= most {
            return Ok(Put::Full);
        }
        let mut set = redis::cmd("HSET");
        set.arg(key(tenant)).arg(queue).arg(json);
        self.one("HSET queue destination", set).await?;
        Ok(Put::Done)
    }

    async fn all(&self, tenant: &Tenant) -> Result<BTreeMap<String, Destination>, StoreError> {
        let mut all = redis::cmd("HGETALL");
        all.arg(key(tenant));
        let map: BTreeMap<String, String> =
            FromRedisValue::from_redis_value(self.one("HGETALL queue destinations", all).await?)
                .map_err(|e| StoreError::internal(format!("destinations: {e}")))?;
        // A destination this version cannot read is skipped.
        Ok(map
            .into_iter()
            .filter_map(|(q, json)| serde_json::from_str(&json).ok().map(|d| (q, d)))
            .collect())
    }

    async fn get(&self, tenant: &Tenant, queue: &str) -> Result<Option<Destination>, StoreError> {
        let mut get = redis::cmd("HGET");
        get.arg(key(tenant)).arg(queue);
        let json: Option<String> =
            FromRedisValue::from_redis_value(self.one("HGET queue destination", get).await?)
                .map_err(|e| StoreError::internal(format!("destination: {e}")))?;
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }
}
