//! Per-tenant quotas on the service itself: calls per second (GCRA, the
//! rate limiter's own algorithm, run in process) and streams open at once.
//! Counted per replica, so no call pays a Redis round trip for it: with N
//! replicas behind a balancer, a tenant gets up to N times the rate.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;

use super::settings::{AuthSettings, QuotaSpec};
use crate::keys::Tenant;
use crate::services::ratelimit::algorithm::{self, State};
use crate::services::ratelimit::{Algorithm, FailMode, Limit};
use crate::store::memory::lock;

#[derive(Default)]
struct Use {
    rate: Option<State>,
    streams: u32,
}

/// The quotas and what each tenant has used.
pub struct Quotas {
    specs: HashMap<String, QuotaSpec>,
    default: QuotaSpec,
    used: Arc<Mutex<HashMap<Tenant, Use>>>,
    epoch: Instant,
}

/// A stream counted against its tenant until dropped.
pub struct StreamSlot {
    used: Arc<Mutex<HashMap<Tenant, Use>>>,
    tenant: Tenant,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Some(u) = lock(&self.used).get_mut(&self.tenant) {
            u.streams = u.streams.saturating_sub(1);
        }
    }
}

fn limit_of(spec: &QuotaSpec) -> Option<Limit> {
    if spec.calls_per_second == 0 {
        return None;
    }
    let burst = if spec.burst == 0 {
        spec.calls_per_second
    } else {
        spec.burst
    };
    // `burst` calls per `burst / rate` seconds: the rate, with that burst.
    let period_us = u64::from(burst) * 1_000_000 / u64::from(spec.calls_per_second);
    Some(Limit {
        algorithm: Algorithm::Gcra,
        limit: u64::from(burst),
        period_us: period_us.max(1),
        refill: 0,
        fail_mode: FailMode::Closed,
    })
}

impl Quotas {
    pub fn new(settings: &AuthSettings) -> Self {
        Self {
            specs: settings.quotas.clone().into_iter().collect(),
            default: settings.default_quota.clone(),
            used: Arc::default(),
            epoch: Instant::now(),
        }
    }

    fn spec(&self, tenant: &Tenant) -> &QuotaSpec {
        self.specs.get(tenant.as_str()).unwrap_or(&self.default)
    }

    /// Admits one call of `tenant`, or says why not and when to retry.
    pub fn admit(
        &self,
        tenant: &Tenant,
        streaming: bool,
    ) -> Result<Option<StreamSlot>, (String, Duration)> {
        let spec = self.spec(tenant);
        let limit = limit_of(spec);
        if limit.is_none() && (!streaming || spec.max_streams == 0) {
            return Ok(None);
        }
        let now_us = self.epoch.elapsed().as_micros() as u64 + 1;
        let mut used = lock(&self.used);
        let entry = used.entry(tenant.clone()).or_default();
        if let Some(limit) = &limit {
            let outcome = algorithm::apply(limit, 1, now_us, entry.rate, algorithm::Mode::Check);
            if !outcome.decision.allowed {
                let wait = Duration::from_micros(outcome.decision.retry_after_us.unwrap_or(1_000));
                return Err((
                    format!(
                        "tenant {tenant} is over its quota of {} calls per second (auth.quotas)",
                        spec.calls_per_second
                    ),
                    wait,
                ));
            }
            if let Some((state, _)) = outcome.write {
                entry.rate = Some(state);
            }
        }
        if !streaming || spec.max_streams == 0 {
            return Ok(None);
        }
        if entry.streams >= spec.max_streams {
            return Err((
                format!(
                    "tenant {tenant} has {} streams open, its quota (auth.quotas.max_streams)",
                    entry.streams
                ),
                Duration::from_secs(1),
            ));
        }
        entry.streams += 1;
        Ok(Some(StreamSlot {
            used: self.used.clone(),
            tenant: tenant.clone(),
        }))
    }
}
