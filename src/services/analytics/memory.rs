//! The in-process analytics store: the same rules as `lua/track.lua` —
//! combinations forgotten after the metric's longest bucket life, folding
//! into `__other__` past the cap, top lists trimmed to `top_size` once they
//! hold twice as many — with HyperLogLog sketches of Redis's precision.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasherDefault;
use std::sync::Arc;

use async_trait::async_trait;
use hyperloglogplus::{HyperLogLog, HyperLogLogPlus};

use super::model::{Agg, Combo, MetricBatch, Resolution};
use super::store::{MetricInfo, Store};
use crate::keys::Tenant;
use crate::store::StoreError;
use crate::store::memory::{Expiring, Memory, PerTenant};

/// A fixed hasher: sketches of different buckets must hash alike to merge.
type Sketch = HyperLogLogPlus<String, BuildHasherDefault<DefaultHasher>>;

/// Redis's HyperLogLog precision (16384 registers, 0.81% standard error).
const PRECISION: u8 = 14;

fn sketch() -> Sketch {
    // Precision 14 is within the crate's 4..=18.
    Sketch::new(PRECISION, BuildHasherDefault::default()).expect("a valid precision")
}

#[derive(Default)]
struct Bucket {
    expires_ms: u64,
    series: HashMap<Combo, Agg>,
    uniques: Option<Sketch>,
    tops: HashMap<String, HashMap<String, i64>>,
}

#[derive(Default)]
struct MetricState {
    /// Combination → when it was last tracked.
    combos: HashMap<Combo, u64>,
    folded: u64,
    last_ms: u64,
    keep_ms: u64,
    buckets: HashMap<(String, u64), Bucket>,
}

#[derive(Default)]
struct Tenants {
    /// Metric → when it was last admitted, and for how long it is kept.
    index: BTreeMap<String, (u64, u64)>,
    metrics: HashMap<String, MetricState>,
}

impl Expiring for Tenants {
    fn sweep(&mut self, now_us: u64) {
        let now = now_us / 1000;
        self.index.retain(|_, (at, keep)| *at + *keep > now);
        self.metrics.retain(|_, m| {
            m.buckets.retain(|_, b| b.expires_ms > now);
            let keep = m.keep_ms;
            m.combos.retain(|_, at| *at + keep > now);
            m.last_ms + m.keep_ms > now
        });
    }

    fn is_empty(&self) -> bool {
        self.index.is_empty() && self.metrics.is_empty()
    }
}

pub struct MemoryAnalytics {
    memory: Arc<Memory>,
    state: Arc<PerTenant<Tenants>>,
}

impl MemoryAnalytics {
    pub fn new(memory: &Arc<Memory>) -> Arc<Self> {
        Arc::new(Self {
            memory: memory.clone(),
            state: memory.tenant_state(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.memory.now_us() / 1000
    }

    /// The live buckets of `starts`, in order (`None` where absent).
    fn read<T>(
        &self,
        tenant: &Tenant,
        metric: &str,
        resolution: &Resolution,
        starts: &[u64],
        f: impl Fn(Option<&Bucket>) -> T,
    ) -> Vec<T> {
        let now = self.now_ms();
        self.state.with(tenant, |t| {
            let m = t.metrics.get(metric);
            starts
                .iter()
                .map(|&start| {
                    let b = m
                        .and_then(|m| m.buckets.get(&(resolution.name.clone(), start)))
                        .filter(|b| b.expires_ms > now);
                    f(b)
                })
                .collect()
        })
    }
}

fn write(m: &mut MetricState, batch: &MetricBatch, now: u64) -> u64 {
    let config = &batch.config;
    m.keep_ms = config.keep_ms();
    m.last_ms = now;
    let keep = m.keep_ms;
    m.combos.retain(|_, at| *at + keep > now);
    let mut folded = 0;
    for slice in &batch.slices {
        let at = slice.at_ms.unwrap_or(now);
        for (combo, (agg, events)) in &slice.series {
            let combo = if m.combos.contains_key(combo)
                || (m.combos.len() as u64) < config.max_combinations
            {
                m.combos.insert(combo.clone(), now);
                combo.clone()
            } else {
                folded += u64::from(*events);
                Combo::other()
            };
            for r in &config.resolutions {
                bucket(m, r, at)
                    .series
                    .entry(combo.clone())
                    .or_default()
                    .add(agg);
            }
        }
        for r in &config.resolutions {
            let b = bucket(m, r, at);
            if !slice.uniques.is_empty() {
                let s = b.uniques.get_or_insert_with(sketch);
                for id in &slice.uniques {
                    s.insert(id.as_str());
                }
            }
            for ((label, value), n) in &slice.tops {
                let list = b.tops.entry(label.clone()).or_default();
                *list.entry(value.clone()).or_default() += n;
                trim(list, config.top_size);
            }
        }
    }
    m.folded += folded;
    folded
}

fn bucket<'a>(m: &'a mut MetricState, r: &Resolution, at: u64) -> &'a mut Bucket {
    let start = r.start_of(at);
    let b = m.buckets.entry((r.name.clone(), start)).or_default();
    b.expires_ms = r.expires_at(start);
    b
}

/// Keeps the `size` heaviest once a list holds twice as many (as the
/// script's `ZREMRANGEBYRANK`; ties go by value, as a sorted set's).
fn trim(list: &mut HashMap<String, i64>, size: usize) {
    if list.len() <= 2 * size {
        return;
    }
    let mut all: Vec<(String, i64)> = list.drain().collect();
    all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    all.truncate(size);
    list.extend(all);
}

#[async_trait]
impl Store for MemoryAnalytics {
    async fn admit(
        &self,
        tenant: &Tenant,
        metrics: &[&str],
        keep_ms: u64,
        max: usize,
    ) -> Result<Vec<String>, StoreError> {
        let now = self.now_ms();
        Ok(self.state.with(tenant, |t| {
            t.index.retain(|_, (at, keep)| *at + *keep > now);
            let new = metrics
                .iter()
                .filter(|m| !t.index.contains_key(**m))
                .count();
            if t.index.len() + new > max {
                return metrics
                    .iter()
                    .filter(|m| !t.index.contains_key(**m))
                    .map(|m| m.to_string())
                    .collect();
            }
            for m in metrics {
                t.index.insert(m.to_string(), (now, keep_ms));
            }
            Vec::new()
        }))
    }

    async fn track(&self, tenant: &Tenant, batches: &[MetricBatch]) -> Result<u64, StoreError> {
        let now = self.now_ms();
        Ok(self.state.with(tenant, |t| {
            batches
                .iter()
                .map(|b| write(t.metrics.entry(b.metric.clone()).or_default(), b, now))
                .sum()
        }))
    }

    async fn series(
        &self,
        tenant: &Tenant,
        metric: &str,
        resolution: &Resolution,
        starts: &[u64],
    ) -> Result<Vec<Vec<(Combo, Agg)>>, StoreError> {
        Ok(self.read(tenant, metric, resolution, starts, |b| {
            b.map(|b| b.series.iter().map(|(c, a)| (c.clone(), *a)).collect())
                .unwrap_or_default()
        }))
    }

    async fn unique(
        &self,
        tenant: &Tenant,
        metric: &str,
        resolution: &Resolution,
        starts: &[u64],
    ) -> Result<u64, StoreError> {
        let sketches = self.read(tenant, metric, resolution, starts, |b| {
            b.and_then(|b| b.uniques.clone())
        });
        let mut all = sketch();
        for s in sketches.into_iter().flatten() {
            all.merge(&s)
                .map_err(|e| StoreError::internal(format!("merging sketches: {e:?}")))?;
        }
        Ok(all.count().round() as u64)
    }

    async fn top(
        &self,
        tenant: &Tenant,
        metric: &str,
        label: &str,
        resolution: &Resolution,
        starts: &[u64],
    ) -> Result<BTreeMap<String, i64>, StoreError> {
        let lists = self.read(tenant, metric, resolution, starts, |b| {
            b.and_then(|b| b.tops.get(label).cloned())
        });
        let mut sum = BTreeMap::new();
        for (value, n) in lists.into_iter().flatten().flatten() {
            *sum.entry(value).or_default() += n;
        }
        Ok(sum)
    }

    async fn metrics(&self, tenant: &Tenant) -> Result<Vec<MetricInfo>, StoreError> {
        let now = self.now_ms();
        Ok(self.state.with(tenant, |t| {
            t.index
                .iter()
                .filter(|(_, (at, keep))| *at + *keep > now)
                .map(|(name, (at, _))| {
                    let m = t.metrics.get(name);
                    MetricInfo {
                        name: name.clone(),
                        last_ms: m.map_or(*at, |m| m.last_ms.max(*at)),
                        combinations: m.map_or(0, |m| {
                            m.combos.values().filter(|c| **c + m.keep_ms > now).count() as u64
                        }),
                        folded: m.map_or(0, |m| m.folded),
                    }
                })
                .collect()
        }))
    }
}
