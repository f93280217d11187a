//! The in-process store: the same rules as Redis, held in this process only.
//!
//! Entries carry an expiry like Redis keys do; reads treat expired entries as
//! absent and a background sweep drops them, so memory stays bounded by the
//! live keys.

pub(crate) mod cache;
mod ratelimit;
mod session;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, Weak},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;

use super::{StoreError, StoreHealth};
use crate::ratelimit::algorithm::State;

/// Where the memory store reads the time; tests can substitute their own.
pub trait Clock: Send + Sync + 'static {
    fn now_us(&self) -> u64;
}

/// Wall-clock microseconds since the Unix epoch, like Redis `TIME`.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_us(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0)
    }
}

struct Entry {
    state: State,
    expires_at_us: u64,
}

/// Number of independently locked shards; spreads contention across keys.
const SHARDS: usize = 16;

pub struct MemoryStore {
    clock: Arc<dyn Clock>,
    // A std Mutex, not tokio's: critical sections are a few arithmetic steps
    // and never span an `.await`, so a blocking lock is cheaper and cannot
    // deadlock the runtime.
    shards: Vec<Mutex<HashMap<String, Entry>>>,
    cache: Mutex<cache::CacheState>,
    sessions: Mutex<session::SessionState>,
}

impl MemoryStore {
    /// A store on the system clock, with a sweeper that stops when the store
    /// is dropped.
    pub fn new() -> Arc<Self> {
        let store = Self::with_clock(Arc::new(SystemClock));
        spawn_sweeper(Arc::downgrade(&store));
        store
    }

    pub fn with_clock(clock: Arc<dyn Clock>) -> Arc<Self> {
        Arc::new(Self {
            clock,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            cache: Mutex::new(cache::CacheState::default()),
            sessions: Mutex::new(session::SessionState::default()),
        })
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, HashMap<String, Entry>> {
        let index = (fnv1a(key) as usize) % self.shards.len();
        // A poisoned shard only means a panic elsewhere mid-update of plain
        // data; the data itself is still consistent, so keep serving.
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn cache_state(&self) -> MutexGuard<'_, cache::CacheState> {
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn session_state(&self) -> MutexGuard<'_, session::SessionState> {
        self.sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn sweep(&self) {
        let now = self.clock.now_us();
        self.cache_state().sweep(now);
        self.session_state().sweep(now);
        for shard in &self.shards {
            let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
            map.retain(|_, e| e.expires_at_us > now);
        }
    }

    /// Number of live entries, for tests of expiry.
    pub fn len(&self) -> usize {
        let now = self.clock.now_us();
        self.shards
            .iter()
            .map(|s| {
                let map = s.lock().unwrap_or_else(|p| p.into_inner());
                map.values().filter(|e| e.expires_at_us > now).count()
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// FNV-1a: a fixed, fast hash so a key always maps to the same shard.
fn fnv1a(key: &str) -> u64 {
    key.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

fn spawn_sweeper(store: Weak<MemoryStore>) {
    if tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            match store.upgrade() {
                Some(store) => store.sweep(),
                None => return,
            }
        }
    });
}

#[async_trait]
impl StoreHealth for MemoryStore {
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
