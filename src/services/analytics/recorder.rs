//! Rate-limit analytics: every `Check` decision of a policy with
//! `analytics = true` is counted here, in memory, and flushed as events of
//! the metric `ratelimit.checks` every `analytics.flush_interval`, so the
//! check itself pays one uncontended lock and a map update, never a Redis
//! call. A replica that crashes loses at most one interval of counts.
//!
//! Each flush writes, per tenant and policy, one event of the allowed
//! checks (`{policy, result = "allowed"}`) and one per denied identifier
//! (`{policy, result = "denied"}` with the top label `identifier`), so the
//! series sum to the decisions made and `Top(ratelimit.checks, identifier)`
//! answers who is throttled most.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::model::{Amount, Event, OTHER};
use super::service::Analytics;
use crate::keys::Tenant;
use crate::store::memory::lock;

/// The metric decisions are recorded under.
pub const METRIC: &str = "ratelimit.checks";
/// Most denied identifiers remembered per flush; the rest are counted as
/// `__other__`, so a flood of distinct keys cannot grow memory.
const MAX_IDENTIFIERS: usize = 10_000;

#[derive(Default)]
struct Counts {
    allowed: HashMap<(Tenant, Arc<str>), i64>,
    denied: HashMap<(Tenant, Arc<str>, String), i64>,
}

#[derive(Default)]
pub struct Recorder {
    counts: Mutex<Counts>,
}

impl Recorder {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Counts one decision of `policy` for `identifier` (the checked key).
    pub fn record(&self, tenant: &Tenant, policy: &Arc<str>, allowed: bool, identifier: &str) {
        let mut counts = lock(&self.counts);
        if allowed {
            match counts.allowed.get_mut(&(tenant.clone(), policy.clone())) {
                Some(n) => *n += 1,
                None => {
                    counts.allowed.insert((tenant.clone(), policy.clone()), 1);
                }
            }
            return;
        }
        let full = counts.denied.len() >= MAX_IDENTIFIERS;
        let key = (tenant.clone(), policy.clone(), identifier.to_owned());
        if let Some(n) = counts.denied.get_mut(&key) {
            *n += 1;
        } else {
            let id = if full { OTHER } else { identifier };
            *counts
                .denied
                .entry((tenant.clone(), policy.clone(), id.to_owned()))
                .or_default() += 1;
        }
    }

    /// What was counted since the last drain, as events by tenant.
    fn drain(&self) -> BTreeMap<Tenant, Vec<Event>> {
        let counts = std::mem::take(&mut *lock(&self.counts));
        let mut out: BTreeMap<Tenant, Vec<Event>> = BTreeMap::new();
        let event = |policy: &str, result: &str, n: i64| Event {
            metric: METRIC.to_owned(),
            dimensions: BTreeMap::from([
                ("policy".to_owned(), policy.to_owned()),
                ("result".to_owned(), result.to_owned()),
            ]),
            amount: Amount::Count(n),
            at_ms: None,
            unique_id: None,
            top: BTreeMap::new(),
        };
        for ((tenant, policy), n) in counts.allowed {
            out.entry(tenant)
                .or_default()
                .push(event(&policy, "allowed", n));
        }
        for ((tenant, policy, id), n) in counts.denied {
            let mut e = event(&policy, "denied", n);
            // Identifiers are caller keys of up to 512 bytes: the top label
            // keeps the first 256, as any value.
            let mut end = id.len().min(256);
            while !id.is_char_boundary(end) {
                end -= 1;
            }
            e.top.insert("identifier".to_owned(), id[..end].to_owned());
            out.entry(tenant).or_default().push(e);
        }
        out
    }

    /// Writes what was counted; failures are logged and the counts dropped
    /// (analytics are never worth queueing checks behind).
    pub async fn flush(&self, analytics: &Analytics) {
        let batch = analytics.settings().max_batch;
        for (tenant, events) in self.drain() {
            for chunk in events.chunks(batch) {
                if let Err(e) = analytics.track(&tenant, chunk.to_vec()).await {
                    tracing::warn!(error = ?e, tenant = %tenant, "rate-limit analytics: a flush failed; its counts are lost");
                }
            }
        }
    }

    /// Flushes every `every` until shutdown, then once more.
    pub fn spawn_flusher(
        self: Arc<Self>,
        analytics: Arc<Analytics>,
        every: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => self.flush(&analytics).await,
                    _ = shutdown.changed() => {
                        self.flush(&analytics).await;
                        return;
                    }
                }
            }
        });
    }
}
