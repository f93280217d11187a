//! The queue between the call path and the store: `record` never waits;
//! a writer task stores queued events in batches.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::Settings;
use super::{memory::MemoryAudit, redis::RedisAudit};
use crate::audit::{AuditEvent, AuditLog, Stored};
use crate::keys::Tenant;
use crate::store::{Backend, StoreError};

/// Where events are kept.
#[async_trait]
pub(super) trait Store: Send + Sync {
    async fn append(
        &self,
        tenant: &Tenant,
        events: &[AuditEvent],
        max_entries: u64,
    ) -> Result<(), StoreError>;
    async fn list(
        &self,
        tenant: &Tenant,
        limit: usize,
        before: Option<&str>,
    ) -> Result<Vec<Stored>, StoreError>;
}

/// Most events one write stores.
const BATCH: usize = 100;

pub struct Sink {
    queue: mpsc::Sender<AuditEvent>,
    store: Arc<dyn Store>,
}

impl Sink {
    /// Starts the writer on the application's backend.
    pub fn start(backend: &Backend, settings: &Settings) -> Arc<Self> {
        let store: Arc<dyn Store> = match backend {
            Backend::Memory(memory) => MemoryAudit::new(memory),
            Backend::Redis(redis) => Arc::new(RedisAudit::new(redis.clone())),
        };
        let (queue, events) = mpsc::channel(settings.queue);
        tokio::spawn(write(events, store.clone(), settings.max_entries));
        Arc::new(Self { queue, store })
    }
}

async fn write(mut events: mpsc::Receiver<AuditEvent>, store: Arc<dyn Store>, max: u64) {
    let mut batch = Vec::with_capacity(BATCH);
    while events.recv_many(&mut batch, BATCH).await > 0 {
        batch.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        for chunk in batch.chunk_by(|a, b| a.tenant == b.tenant) {
            if let Err(e) = store.append(&chunk[0].tenant, chunk, max).await {
                metrics::counter!(crate::metrics::AUDIT_DROPPED).increment(chunk.len() as u64);
                tracing::warn!(error = %e, events = chunk.len(), "audit events not stored (they are in this log)");
            }
        }
        batch.clear();
    }
}

#[async_trait]
impl AuditLog for Sink {
    fn record(&self, event: AuditEvent) {
        if self.queue.try_send(event).is_err() {
            metrics::counter!(crate::metrics::AUDIT_DROPPED).increment(1);
        }
    }

    async fn list(
        &self,
        tenant: &Tenant,
        limit: usize,
        before: Option<&str>,
    ) -> Result<Vec<Stored>, StoreError> {
        self.store.list(tenant, limit, before).await
    }
}
