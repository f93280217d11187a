//! What an analytics store does; the memory and Redis stores implement it.
//! Handlers pass metrics, resolutions and bucket starts; stores name their
//! keys, and bucket events without a time by their own clock (Redis
//! `TIME`).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use super::model::{Agg, Combo, MetricBatch, Resolution};
use crate::keys::Tenant;
use crate::store::{Backend, StoreError};

/// One metric of the tenant's index.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricInfo {
    pub name: String,
    pub last_ms: u64,
    pub combinations: u64,
    pub folded: u64,
}

#[async_trait]
pub trait Store: Send + Sync {
    /// Enters `metrics` in the tenant's index, which holds at most `max`
    /// metrics tracked within `keep_ms`; answers the ones refused (nothing
    /// is entered then).
    async fn admit(
        &self,
        tenant: &Tenant,
        metrics: &[&str],
        keep_ms: u64,
        max: usize,
    ) -> Result<Vec<String>, StoreError>;
    /// Writes every batch (one atomic step per metric); answers how many
    /// events went to `__other__`.
    async fn track(&self, tenant: &Tenant, batches: &[MetricBatch]) -> Result<u64, StoreError>;
    /// Each bucket's series, in the order of `starts`.
    async fn series(
        &self,
        tenant: &Tenant,
        metric: &str,
        resolution: &Resolution,
        starts: &[u64],
    ) -> Result<Vec<Vec<(Combo, Agg)>>, StoreError>;
    /// The estimated distinct unique ids over the buckets.
    async fn unique(
        &self,
        tenant: &Tenant,
        metric: &str,
        resolution: &Resolution,
        starts: &[u64],
    ) -> Result<u64, StoreError>;
    /// The top list of `label` summed over the buckets (empty when the
    /// metric has none under that name).
    async fn top(
        &self,
        tenant: &Tenant,
        metric: &str,
        label: &str,
        resolution: &Resolution,
        starts: &[u64],
    ) -> Result<BTreeMap<String, i64>, StoreError>;
    /// The tenant's metrics, in name order.
    async fn metrics(&self, tenant: &Tenant) -> Result<Vec<MetricInfo>, StoreError>;
}

pub fn build(backend: &Backend) -> Arc<dyn Store> {
    match backend {
        Backend::Memory(memory) => super::memory::MemoryAnalytics::new(memory),
        Backend::Redis(redis) => super::redis::RedisAnalytics::new(redis.clone()),
    }
}
