//! The audit log in process memory: a bounded list per tenant.

use std::collections::VecDeque;
use std::sync::Arc;

use async_trait::async_trait;

use super::sink::Store;
use crate::audit::{AuditEvent, Stored};
use crate::keys::Tenant;
use crate::store::StoreError;
use crate::store::memory::{Expiring, Memory, PerTenant};

#[derive(Default)]
struct Log {
    next: u64,
    events: VecDeque<(u64, AuditEvent)>,
}

impl Expiring for Log {
    // Nothing expires: the log is bounded by length.
    fn sweep(&mut self, _now_us: u64) {}

    fn is_empty(&self) -> bool {
        self.events.is_empty() && self.next == 0
    }
}

pub struct MemoryAudit {
    state: Arc<PerTenant<Log>>,
}

impl MemoryAudit {
    pub fn new(memory: &Arc<Memory>) -> Arc<Self> {
        Arc::new(Self {
            state: memory.tenant_state(),
        })
    }
}

#[async_trait]
impl Store for MemoryAudit {
    async fn append(
        &self,
        tenant: &Tenant,
        events: &[AuditEvent],
        max_entries: u64,
    ) -> Result<(), StoreError> {
        self.state.with(tenant, |log| {
            for event in events {
                log.next += 1;
                log.events.push_back((log.next, event.clone()));
            }
            while log.events.len() as u64 > max_entries {
                log.events.pop_front();
            }
        });
        Ok(())
    }

    async fn list(
        &self,
        tenant: &Tenant,
        limit: usize,
        before: Option<&str>,
    ) -> Result<Vec<Stored>, StoreError> {
        let before = match before {
            None => u64::MAX,
            Some(id) => id
                .split_once('-')
                .and_then(|(n, _)| n.parse().ok())
                .unwrap_or(0),
        };
        Ok(self.state.with(tenant, |log| {
            log.events
                .iter()
                .rev()
                .filter(|(n, _)| *n < before)
                .take(limit)
                .map(|(n, event)| Stored {
                    id: format!("{n}-0"),
                    event: event.clone(),
                })
                .collect()
        }))
    }
}
