//! Rate limits in process memory: the same algorithms as the Lua scripts
//! (see [`super::algorithm`]), under a lock per shard of keys.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, Weak},
};

use async_trait::async_trait;

use super::algorithm::{self, Mode, State};
use super::reservation::{self, Reservation, SettleResult, Settled, Settlement};
use super::store::{Store, reservation_key, state_key};
use super::{Decision, Limited, RateCheck};
use crate::keys::Tenant;
use crate::store::StoreError;
use crate::store::memory::{Memory, Sweep, lock};

struct Entry {
    state: State,
    expires_at_us: u64,
}

/// A reservation's marker: the state right after its charge.
struct Marker {
    state: State,
    settled: bool,
    expires_at_us: u64,
}

/// Independently locked shards spread contention across keys.
const SHARDS: usize = 16;

/// Entries by their full key (which carries the tenant), as in Redis.
pub struct MemoryRateLimits {
    memory: Arc<Memory>,
    shards: Vec<Mutex<HashMap<String, Entry>>>,
    /// Reservation markers by key, locked after a state's shard.
    markers: Mutex<HashMap<String, Marker>>,
}

impl MemoryRateLimits {
    pub fn new(memory: &Arc<Memory>) -> Arc<Self> {
        let store = Arc::new(Self {
            memory: memory.clone(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            markers: Mutex::new(HashMap::new()),
        });
        let sweep: Weak<dyn Sweep> = Arc::downgrade(&store) as Weak<MemoryRateLimits>;
        memory.register(sweep);
        store
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, HashMap<String, Entry>> {
        lock(&self.shards[(fnv1a(key) as usize) % self.shards.len()])
    }

    fn check_one(&self, tenant: &Tenant, check: &RateCheck, mode: Mode) -> Decision {
        let key = state_key(tenant, &check.target);
        let mut shard = self.shard(&key);
        // Read the clock under the lock so concurrent checks of one key see
        // time move forward, as they would inside Redis.
        let now = self.memory.now_us();
        Self::apply(&mut shard, key, check, now, mode)
    }

    /// One check on its shard's entries.
    fn apply(
        shard: &mut HashMap<String, Entry>,
        key: String,
        check: &RateCheck,
        now: u64,
        mode: Mode,
    ) -> Decision {
        let state = shard
            .get(&key)
            .filter(|e| e.expires_at_us > now)
            .map(|e| e.state);
        let outcome = algorithm::apply(&check.target.limit, check.cost, now, state, mode);
        if let Some((state, ttl_us)) = outcome.write {
            // Redis keys expire on whole milliseconds (PEXPIRE); match it.
            let ttl_us = ttl_us.div_ceil(1000).max(1) * 1000;
            shard.insert(
                key,
                Entry {
                    state,
                    expires_at_us: now + ttl_us,
                },
            );
        }
        outcome.decision
    }
}

/// FNV-1a: a fixed, fast hash so a key always maps to the same shard.
fn fnv1a(key: &str) -> u64 {
    key.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

impl Sweep for MemoryRateLimits {
    fn sweep(&self, now_us: u64) {
        for shard in &self.shards {
            lock(shard).retain(|_, e| e.expires_at_us > now_us);
        }
        lock(&self.markers).retain(|_, m| m.expires_at_us > now_us);
    }
}

#[async_trait]
impl Store for MemoryRateLimits {
    async fn check(
        &self,
        tenant: &Tenant,
        checks: &[RateCheck],
    ) -> Result<Vec<Decision>, StoreError> {
        Ok(checks
            .iter()
            .map(|c| self.check_one(tenant, c, Mode::Check))
            .collect())
    }

    async fn check_all(
        &self,
        tenant: &Tenant,
        checks: &[RateCheck],
    ) -> Result<Option<(bool, Vec<Decision>)>, StoreError> {
        // Every shard the batch touches, locked in index order (so two
        // batches never wait on each other), for the whole batch.
        let keys: Vec<String> = checks
            .iter()
            .map(|c| state_key(tenant, &c.target))
            .collect();
        let index = |k: &str| (fnv1a(k) as usize) % self.shards.len();
        let mut wanted: Vec<usize> = keys.iter().map(|k| index(k)).collect();
        wanted.sort_unstable();
        wanted.dedup();
        let mut guards: HashMap<usize, MutexGuard<'_, HashMap<String, Entry>>> = wanted
            .into_iter()
            .map(|i| (i, lock(&self.shards[i])))
            .collect();
        let now = self.memory.now_us();
        let mut run = |mode| -> Vec<Decision> {
            checks
                .iter()
                .zip(&keys)
                .map(|(c, k)| {
                    let shard = guards.get_mut(&index(k)).expect("every shard is locked");
                    Self::apply(shard, k.clone(), c, now, mode)
                })
                .collect()
        };
        let dry = run(Mode::Dry);
        if dry.iter().zip(checks).all(|(d, c)| d.allowed || c.shadow) {
            Ok(Some((true, run(Mode::Check))))
        } else {
            Ok(Some((false, dry)))
        }
    }

    async fn report(&self, tenant: &Tenant, check: &RateCheck) -> Result<Decision, StoreError> {
        Ok(self.check_one(tenant, check, Mode::Force))
    }

    async fn reserve(
        &self,
        tenant: &Tenant,
        check: &RateCheck,
        id: &str,
    ) -> Result<Decision, StoreError> {
        let key = state_key(tenant, &check.target);
        let mut shard = self.shard(&key);
        let now = self.memory.now_us();
        let d = Self::apply(&mut shard, key.clone(), check, now, Mode::Check);
        if let (true, Some(entry)) = (d.allowed && check.cost > 0, shard.get(&key)) {
            lock(&self.markers).insert(
                reservation_key(tenant, &check.target, id),
                Marker {
                    state: entry.state,
                    settled: false,
                    expires_at_us: entry.expires_at_us,
                },
            );
        }
        Ok(d)
    }

    async fn settle(
        &self,
        tenant: &Tenant,
        target: &Limited,
        reservation: &Reservation,
        settlement: Settlement,
    ) -> Result<Settled, StoreError> {
        let key = state_key(tenant, target);
        let mut shard = self.shard(&key);
        let now = self.memory.now_us();
        let mut markers = lock(&self.markers);
        let marker = markers
            .get_mut(&reservation_key(tenant, target, &reservation.id))
            .filter(|m| m.expires_at_us > now);
        let result = match marker {
            None => SettleResult::Expired,
            Some(m) if m.settled => SettleResult::AlreadySettled,
            Some(m) => {
                m.settled = true;
                let current = shard
                    .get(&key)
                    .filter(|e| e.expires_at_us > now)
                    .map(|e| e.state);
                let given = reservation::give_back(
                    &target.limit,
                    m.state,
                    current,
                    settlement.give_back,
                    now,
                );
                if let (Some(state), Some(entry)) = (given, shard.get_mut(&key)) {
                    entry.state = state;
                }
                SettleResult::Settled
            }
        };
        drop(markers);
        let (cost, mode) = if result != SettleResult::AlreadySettled && settlement.extra > 0 {
            (settlement.extra, Mode::Force)
        } else {
            (0, Mode::Dry)
        };
        let check = RateCheck {
            target: target.clone(),
            cost,
            shadow: false,
        };
        let decision = Self::apply(&mut shard, key, &check, now, mode);
        Ok(Settled { result, decision })
    }

    async fn reset(&self, tenant: &Tenant, target: &Limited) -> Result<(), StoreError> {
        let key = state_key(tenant, target);
        let mut shard = self.shard(&key);
        shard.remove(&key);
        // Its reservations are void: settling one gives nothing back.
        let prefix = reservation_key(tenant, target, "");
        lock(&self.markers).retain(|k, _| !k.starts_with(&prefix));
        Ok(())
    }
}
