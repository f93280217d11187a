//! Flood protection: an in-process cache of denials.
//!
//! When a check is rejected with a known `retry_after`, the same key and
//! limit cannot admit the same cost (or a larger one) before then: other
//! replicas' checks only spend more. So until then a check of at least
//! that cost is answered "rejected" here, without Redis. Only denials are
//! cached, so the cache can never admit more than the limit; what it can
//! get wrong is a `Reset`, which is why a reset clears the entry here and,
//! through Redis pub/sub (a single Redis server), on every replica.
//!
//! Times are the replica's monotonic clock: an entry lives for the
//! `retry_after` Redis computed, from when its answer arrived.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Decision, Limit, RateCheck, Scope};
use crate::keys::Tenant;
use crate::store::memory::lock;

/// Hits and misses, the cache's hit rate.
const METRIC: &str = crate::metrics::RATELIMIT_DENIAL_CACHE;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Entry {
    tenant: Tenant,
    key: String,
    scope: Scope,
    limit: Limit,
}

#[derive(Debug, Clone, Copy)]
struct Denied {
    /// Costs of at least this were denied.
    cost: u64,
    until: Instant,
    /// `reset_after` when the denial was answered.
    reset_at: Instant,
    remaining: u64,
}

pub struct Denials {
    entries: Mutex<HashMap<Entry, Denied>>,
    max: usize,
}

fn entry(tenant: &Tenant, check: &RateCheck) -> Entry {
    let t = &check.target;
    Entry {
        tenant: tenant.clone(),
        key: t.key.clone(),
        scope: t.scope.clone(),
        limit: t.limit,
    }
}

impl Denials {
    pub fn new(max: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            max,
        }
    }

    /// The cached denial of `check`, if one still holds.
    pub fn lookup(&self, tenant: &Tenant, check: &RateCheck) -> Option<Decision> {
        if check.cost == 0 || check.shadow {
            return None;
        }
        let now = Instant::now();
        let found = lock(&self.entries)
            .get(&entry(tenant, check))
            .filter(|d| d.until > now && check.cost >= d.cost)
            .copied();
        let result = if found.is_some() { "hit" } else { "miss" };
        metrics::counter!(METRIC, "result" => result).increment(1);
        found.map(|d| Decision {
            allowed: false,
            remaining: d.remaining,
            reset_after_us: d.reset_at.saturating_duration_since(now).as_micros() as u64,
            retry_after_us: Some(d.until.saturating_duration_since(now).as_micros() as u64),
        })
    }

    /// Remembers a denial that has a retry time.
    pub fn remember(&self, tenant: &Tenant, check: &RateCheck, d: &Decision) {
        let Some(retry_us) = d.retry_after_us.filter(|_| !d.allowed && !check.shadow) else {
            return;
        };
        let now = Instant::now();
        let denied = Denied {
            cost: check.cost,
            until: now + Duration::from_micros(retry_us),
            reset_at: now + Duration::from_micros(d.reset_after_us),
            remaining: d.remaining,
        };
        let mut entries = lock(&self.entries);
        if entries.len() >= self.max {
            entries.retain(|_, d| d.until > now);
            if entries.len() >= self.max {
                return;
            }
        }
        entries
            .entry(entry(tenant, check))
            .and_modify(|old| {
                // A smaller cost denied: its (earlier) retry time holds for it.
                if check.cost <= old.cost || old.until <= now {
                    *old = denied;
                }
            })
            .or_insert(denied);
    }

    /// Forgets every cached denial of `key` (a Reset, here or elsewhere).
    pub fn forget(&self, tenant: &Tenant, key: &str) {
        lock(&self.entries).retain(|e, _| !(e.tenant == *tenant && e.key == key));
    }
}
