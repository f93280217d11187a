//! The in-process backend: what every service's memory store shares.
//!
//! Each service keeps its own state (in its folder) in [`PerTenant`] maps,
//! so tenants never see each other's entries, as they never share a Redis
//! key prefix. Entries carry an expiry like Redis keys do; reads treat
//! expired entries as absent, and one background sweep asks every
//! registered [`Sweep`] to drop them, so memory stays bounded by live state.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::keys::Tenant;

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

/// A clock that moves only when told to (tests of expiry).
#[derive(Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(start_us: u64) -> Self {
        Self(AtomicU64::new(start_us))
    }

    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_micros() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_us(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// State that drops what expired when asked.
pub trait Sweep: Send + Sync {
    fn sweep(&self, now_us: u64);
}

/// The shared part of every memory store: the clock and the sweeper.
pub struct Memory {
    clock: Arc<dyn Clock>,
    sweepers: Mutex<Vec<Weak<dyn Sweep>>>,
}

impl Memory {
    /// On the system clock, with a sweeper task (when a Tokio runtime runs)
    /// that stops when the backend is dropped.
    pub fn new() -> Arc<Self> {
        let memory = Self::with_clock(Arc::new(SystemClock));
        spawn_sweeper(Arc::downgrade(&memory));
        memory
    }

    pub fn with_clock(clock: Arc<dyn Clock>) -> Arc<Self> {
        Arc::new(Self {
            clock,
            sweepers: Mutex::new(Vec::new()),
        })
    }

    pub fn now_us(&self) -> u64 {
        self.clock.now_us()
    }

    /// Adds a service's state to the sweep; it leaves when dropped.
    pub fn register(&self, state: Weak<dyn Sweep>) {
        lock(&self.sweepers).push(state);
    }

    /// Drops expired state everywhere now.
    pub fn sweep(&self) {
        let now = self.now_us();
        let live: Vec<Arc<dyn Sweep>> = {
            let mut sweepers = lock(&self.sweepers);
            sweepers.retain(|s| s.strong_count() > 0);
            sweepers.iter().filter_map(Weak::upgrade).collect()
        };
        for state in live {
            state.sweep(now);
        }
    }
}

/// A std Mutex, not tokio's: critical sections are a few steps and never
/// span an `.await`. A poisoned lock only means a panic elsewhere mid-update
/// of plain data, which stays consistent enough to keep serving.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A service's state of one tenant, which drops what expired when swept.
pub trait Expiring: Default + Send + 'static {
    fn sweep(&mut self, now_us: u64);
    /// Nothing left: the tenant's entry goes.
    fn is_empty(&self) -> bool;
}

/// One `T` per tenant, each under the one lock (a service's whole state
/// moves together, as one Redis script sees its slot).
pub struct PerTenant<T>(Mutex<HashMap<Tenant, T>>);

impl<T: Expiring> Sweep for PerTenant<T> {
    fn sweep(&self, now_us: u64) {
        self.retain(|state| {
            state.sweep(now_us);
            !state.is_empty()
        });
    }
}

impl Memory {
    /// A service's per-tenant state, swept with everything else.
    pub fn tenant_state<T: Expiring>(&self) -> Arc<PerTenant<T>> {
        let state = Arc::new(PerTenant::default());
        let sweep: Weak<dyn Sweep> = Arc::downgrade(&state) as Weak<PerTenant<T>>;
        self.register(sweep);
        state
    }
}

impl<T: Default> Default for PerTenant<T> {
    fn default() -> Self {
        Self(Mutex::new(HashMap::new()))
    }
}

impl<T: Default> PerTenant<T> {
    /// Runs `f` on the tenant's state, made empty on first use.
    pub fn with<R>(&self, tenant: &Tenant, f: impl FnOnce(&mut T) -> R) -> R {
        let mut map = lock(&self.0);
        match map.get_mut(tenant) {
            Some(state) => f(state),
            None => f(map.entry(tenant.clone()).or_default()),
        }
    }

    /// Runs `f` on every tenant's state; drops tenants `f` leaves empty
    /// (it answers false).
    pub fn retain(&self, mut f: impl FnMut(&mut T) -> bool) {
        lock(&self.0).retain(|_, state| f(state));
    }
}

fn spawn_sweeper(memory: Weak<Memory>) {
    if tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            match memory.upgrade() {
                Some(memory) => memory.sweep(),
                None => return,
            }
        }
    });
}
