//! What a `Track` does beyond validation, shared by the gRPC handler and
//! the rate limiter's analytics: group the events by metric, make sure
//! every metric has a place in the tenant's index (under the cap), write.
//!
//! Entering a metric in the index is a second round trip, so each replica
//! remembers which metrics it entered recently and only enters them again
//! (refreshing their last-seen time) once a minute.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::model::{self, Event};
use super::settings::Settings;
use super::store::Store;
use crate::keys::Tenant;
use crate::store::StoreError;
use crate::store::memory::lock;

/// How long a replica trusts that a metric it entered is still indexed.
const ADMITTED_FOR: Duration = Duration::from_secs(60);
/// Most remembered entries before the memory is cleared (and refilled).
const MAX_REMEMBERED: usize = 100_000;

pub struct Analytics {
    store: Arc<dyn Store>,
    settings: Settings,
    admitted: Mutex<HashMap<(Tenant, String), Instant>>,
}

#[derive(Debug)]
pub enum TrackError {
    Store(StoreError),
    /// The tenant holds `analytics.max_metrics` metrics; these are new.
    Full(Vec<String>),
}

impl From<StoreError> for TrackError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

impl Analytics {
    pub fn new(store: Arc<dyn Store>, settings: Settings) -> Arc<Self> {
        Arc::new(Self {
            store,
            settings,
            admitted: Mutex::new(HashMap::new()),
        })
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The longest a metric's keys live: how long the index keeps one.
    fn keep_ms(&self) -> u64 {
        let mut configs = vec![self.settings.metric("")];
        configs.extend(
            self.settings
                .metrics
                .keys()
                .map(|m| self.settings.metric(m)),
        );
        configs.iter().map(|c| c.keep_ms()).max().unwrap_or(0)
    }

    /// Writes validated events; answers how many went to `__other__`.
    pub async fn track(&self, tenant: &Tenant, events: Vec<Event>) -> Result<u64, TrackError> {
        let batches = model::batches(events, |m| self.settings.metric(m));
        let now = Instant::now();
        let stale: Vec<&str> = {
            let admitted = lock(&self.admitted);
            batches
                .iter()
                .map(|b| b.metric.as_str())
                .filter(|m| {
                    admitted
                        .get(&(tenant.clone(), (*m).to_owned()))
                        .is_none_or(|at| now.duration_since(*at) > ADMITTED_FOR)
                })
                .collect()
        };
        if !stale.is_empty() {
            let refused = self
                .store
                .admit(tenant, &stale, self.keep_ms(), self.settings.max_metrics)
                .await?;
            if !refused.is_empty() {
                return Err(TrackError::Full(refused));
            }
            let mut admitted = lock(&self.admitted);
            if admitted.len() + stale.len() > MAX_REMEMBERED {
                admitted.clear();
            }
            for m in stale {
                admitted.insert((tenant.clone(), m.to_owned()), now);
            }
        }
        Ok(self.store.track(tenant, &batches).await?)
    }
}
