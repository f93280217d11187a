//! Cron schedules: each tick of a schedule enqueues one message from its
//! template, exactly once whatever the number of replicas.
//!
//! Every replica checks the schedules of the tenants it knows every
//! `queue.schedule_interval`. For a due schedule it computes the following
//! tick and asks the store to fire "the tick due at T, next at T'": the
//! store does it only if the schedule is still due at T, atomically with
//! the enqueue, so one replica wins each tick and the others find it
//! moved. Ticks missed while no replica ran are not made up: the first
//! check after fires once and moves on to the next future tick.
//!
//! Tenants: the default namespace and every tenant of a configured key,
//! plus any tenant that has called the queue service since start-up.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::settings::Settings;
use super::store::{Limits, Store, StoredSchedule};
use super::waiters::Waiters;
use super::{Backoff, NewMessage};
pub use crate::cron::CronSpec;
use crate::keys::Tenant;
use crate::store::memory::lock;

/// A schedule as the service stores it (JSON).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Definition {
    pub cron: String,
    pub time_zone: String,
    pub template: Template,
}

/// A message template: a [`NewMessage`] whose times are relative.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Template {
    pub payload: Vec<u8>,
    pub headers: std::collections::BTreeMap<String, String>,
    pub dedup_window_ms: u64,
    pub delay_ms: u64,
    pub priority: u32,
    pub group: String,
    pub max_attempts: u32,
    pub backoff: String,
    pub lease_ms: u64,
}

impl Template {
    pub fn of(m: &NewMessage) -> Self {
        Self {
            payload: m.payload.clone(),
            headers: m.headers.clone(),
            dedup_window_ms: m.dedup_window_ms,
            delay_ms: m.delay_ms,
            priority: m.priority,
            group: m.group.clone(),
            max_attempts: m.max_attempts,
            backoff: m.backoff.encode(),
            lease_ms: m.lease_ms,
        }
    }

    /// The message of one tick: deduplicated by schedule and tick, so even
    /// a tick fired twice (it cannot be) would enqueue once; its headers
    /// `schedule-id` and `schedule-tick` (ms) say which tick it is.
    pub fn message(&self, id: &str, tick_ms: u64) -> NewMessage {
        let mut headers = self.headers.clone();
        if !id.is_empty() {
            headers.insert("schedule-id".to_owned(), id.to_owned());
            headers.insert("schedule-tick".to_owned(), tick_ms.to_string());
        }
        NewMessage {
            payload: self.payload.clone(),
            headers,
            dedup_id: format!("schedule:{id}:{tick_ms}"),
            dedup_window_ms: self.dedup_window_ms.max(60_000),
            delay_ms: self.delay_ms,
            not_before_ms: 0,
            priority: self.priority,
            group: self.group.clone(),
            max_attempts: self.max_attempts,
            backoff: Backoff::decode(&self.backoff).unwrap_or(Backoff::Fixed { ms: 1000 }),
            lease_ms: self.lease_ms,
            expire_at_ms: 0,
        }
    }
}

/// Fires the schedules of the tenants this replica knows.
pub struct Ticker {
    store: Arc<dyn Store>,
    settings: Settings,
    waiters: Arc<Waiters>,
    tenants: Mutex<BTreeSet<Tenant>>,
}

impl Ticker {
    pub fn new(store: Arc<dyn Store>, settings: Settings, waiters: Arc<Waiters>) -> Arc<Self> {
        Arc::new(Self {
            store,
            settings,
            waiters,
            tenants: Mutex::new(BTreeSet::new()),
        })
    }

    /// Remembers a tenant whose schedules this replica fires.
    pub fn know(&self, tenant: &Tenant) {
        let mut tenants = lock(&self.tenants);
        if !tenants.contains(tenant) {
            tenants.insert(tenant.clone());
        }
    }

    /// The tenants this replica fires schedules and pushes messages for.
    pub fn tenants(&self) -> Vec<Tenant> {
        lock(&self.tenants).iter().cloned().collect()
    }

    pub fn start(self: &Arc<Self>, tenants: Vec<Tenant>, mut shutdown: watch::Receiver<bool>) {
        for t in &tenants {
            self.know(t);
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let ticker = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(ticker.settings.schedule_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
                let tenants: Vec<Tenant> = lock(&ticker.tenants).iter().cloned().collect();
                for tenant in tenants {
                    if let Err(e) = ticker.fire_due(&tenant).await {
                        tracing::debug!(%tenant, error = %e, "queue schedules not checked");
                    }
                }
            }
        });
    }

    /// Fires every due tick of `tenant`'s schedules; answers how many this
    /// replica fired.
    pub async fn fire_due(&self, tenant: &Tenant) -> Result<u64, crate::store::StoreError> {
        let mut fired = 0;
        let queues = self.store.scheduled_queues(tenant).await?;
        if queues.is_empty() {
            return Ok(0);
        }
        let now = self.store.now_ms().await?;
        let limits = Limits {
            max_messages: self.settings.max_messages,
            done_retention_ms: self.settings.done_retention.as_millis() as u64,
        };
        for queue in queues {
            for s in self.store.schedules(tenant, &queue).await? {
                if s.next_ms > now {
                    continue;
                }
                let Some((def, spec)) = decode(&s) else {
                    continue;
                };
                let Some(next) = spec.next_after(now) else {
                    continue;
                };
                let message = def.template.message(&s.id, s.next_ms);
                let won = self
                    .store
                    .fire(tenant, &queue, &s.id, s.next_ms, next, &message, limits)
                    .await?;
                if won {
                    fired += 1;
                    self.waiters.notify(tenant, &queue, 1);
                    metrics::counter!(crate::metrics::QUEUE_SCHEDULE_FIRES).increment(1);
                }
            }
        }
        Ok(fired)
    }
}

/// A stored schedule's definition and parsed expression (a definition
/// this version cannot read is skipped, and logged once per check).
pub fn decode(s: &StoredSchedule) -> Option<(Definition, CronSpec)> {
    let def: Definition = match serde_json::from_str(&s.definition) {
        Ok(def) => def,
        Err(e) => {
            tracing::warn!(schedule = %s.id, error = %e, "a stored schedule cannot be read");
            return None;
        }
    };
    let spec = CronSpec::parse(&def.cron, &def.time_zone).ok()?;
    Some((def, spec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_follow_the_expression_in_its_time_zone() {
        let every5 = CronSpec::parse("*/5 * * * *", "").unwrap();
        // 2026-01-01T00:01:00Z → 00:05.
        let t0 = 1_767_225_660_000;
        assert_eq!(every5.next_after(t0), Some(1_767_225_900_000));
        let paris9 = CronSpec::parse("0 9 * * *", "Europe/Paris").unwrap();
        // 09:00 in Paris in January is 08:00 UTC.
        let next = paris9.next_after(t0).unwrap();
        assert_eq!(next % 86_400_000, 8 * 3_600_000);
        assert!(CronSpec::parse("nope", "").is_err());
        assert_eq!(
            CronSpec::parse("* * * * *", "Mars/Base").unwrap_err()[0].0,
            "time_zone"
        );
        assert_eq!(CronSpec::parse("x", "Mars/Base").unwrap_err().len(), 2);
        let every_second = CronSpec::parse("* * * * * *", "").unwrap();
        assert_eq!(every_second.next_after(1_000_500), Some(1_001_000));
    }
}
