use std::{
    collections::HashMap,
    sync::{Arc, Weak},
};

use async_trait::async_trait;

use super::{MEMORY_US, store::Store};
use crate::keys::Tenant;
use crate::store::StoreError;
use crate::store::memory::{Memory, PerTenant, Sweep};

pub struct MemoryEcho {
    memory: Arc<Memory>,
    /// text → (count, expires at).
    said: PerTenant<HashMap<String, (u64, u64)>>,
}

impl MemoryEcho {
    pub fn new(memory: &Arc<Memory>) -> Arc<Self> {
        let store = Arc::new(Self {
            memory: memory.clone(),
            said: PerTenant::default(),
        });
        let sweep: Weak<dyn Sweep> = Arc::downgrade(&store) as Weak<MemoryEcho>;
        memory.register(sweep);
        store
    }
}

impl Sweep for MemoryEcho {
    fn sweep(&self, now_us: u64) {
        self.said.retain(|said| {
            said.retain(|_, (_, expires)| *expires > now_us);
            !said.is_empty()
        });
    }
}

#[async_trait]
impl Store for MemoryEcho {
    async fn say(&self, tenant: &Tenant, text: &str) -> Result<u64, StoreError> {
        let now = self.memory.now_us();
        Ok(self.said.with(tenant, |said| {
            let entry = said.entry(text.to_owned()).or_insert((0, 0));
            if entry.1 <= now {
                *entry = (0, 0);
            }
            *entry = (entry.0 + 1, now + MEMORY_US);
            entry.0
        }))
    }
}
