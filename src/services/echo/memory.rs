use std::{collections::HashMap, sync::Arc};

use async_trait::async_trait;

use super::{MEMORY_US, store::Store};
use crate::keys::Tenant;
use crate::store::StoreError;
use crate::store::memory::{Expiring, Memory, PerTenant};

/// text → (count, expires at).
#[derive(Default)]
struct Said(HashMap<String, (u64, u64)>);

impl Expiring for Said {
    fn sweep(&mut self, now_us: u64) {
        self.0.retain(|_, (_, expires)| *expires > now_us);
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

pub struct MemoryEcho {
    memory: Arc<Memory>,
    said: Arc<PerTenant<Said>>,
}

impl MemoryEcho {
    pub fn new(memory: &Arc<Memory>) -> Arc<Self> {
        Arc::new(Self {
            memory: memory.clone(),
            said: memory.tenant_state(),
        })
    }
}

#[async_trait]
impl Store for MemoryEcho {
    async fn say(&self, tenant: &Tenant, text: &str) -> Result<u64, StoreError> {
        let now = self.memory.now_us();
        Ok(self.said.with(tenant, |said| {
            let entry = said.0.entry(text.to_owned()).or_insert((0, 0));
            if entry.1 <= now {
                *entry = (0, 0);
            }
            *entry = (entry.0 + 1, now + MEMORY_US);
            entry.0
        }))
    }
}
