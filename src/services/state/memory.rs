//! State in process memory: the same rules as the Lua scripts, one state
//! per tenant under one lock.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use async_trait::async_trait;

use super::store::{Store, WriteLimits};
use super::{
    Acquire, Change, ChangeKind, Changes, DeleteOutcome, Doc, Increment, KeyRange, PutOp,
    PutOutcome,
};
use crate::keys::Tenant;
use crate::store::StoreError;
use crate::store::memory::{Expiring, Memory, PerTenant};

struct StoredDoc {
    value: Vec<u8>,
    content_type: String,
    version: u64,
    expires_at: Option<u64>,
}

/// A collection: its documents in key order, its write counter (kept even
/// when the documents are gone, so versions keep growing) and its log.
#[derive(Default)]
struct Collection {
    docs: BTreeMap<String, StoredDoc>,
    seq: u64,
    log: VecDeque<Change>,
}

impl Collection {
    fn live(&self, key: &str, now: u64) -> Option<&StoredDoc> {
        self.docs
            .get(key)
            .filter(|d| d.expires_at.is_none_or(|at| at > now))
    }

    fn record(&mut self, key: &str, kind: ChangeKind, max: u64) -> u64 {
        self.seq += 1;
        self.log.push_back(Change {
            key: key.to_owned(),
            kind,
            seq: self.seq,
        });
        while self.log.len() as u64 > max {
            self.log.pop_front();
        }
        self.seq
    }
}

struct Counter {
    value: i64,
    expires_at: Option<u64>,
}

struct Lock {
    lease_id: String,
    fence: u64,
    expires_at: u64,
}

#[derive(Default)]
struct StateOfTenant {
    collections: HashMap<String, Collection>,
    counters: HashMap<(String, String), Counter>,
    locks: HashMap<String, Lock>,
    /// Each lock's last fencing token: never dropped.
    fences: HashMap<String, u64>,
}

impl Expiring for StateOfTenant {
    fn sweep(&mut self, now_us: u64) {
        // This store keeps times in ms.
        let now = now_us / 1000;
        let live = |at: &Option<u64>| at.is_none_or(|at| at > now);
        for c in self.collections.values_mut() {
            c.docs.retain(|_, d| live(&d.expires_at));
        }
        self.counters.retain(|_, c| live(&c.expires_at));
        self.locks.retain(|_, l| l.expires_at > now);
    }

    fn is_empty(&self) -> bool {
        self.collections.is_empty()
            && self.counters.is_empty()
            && self.locks.is_empty()
            && self.fences.is_empty()
    }
}

impl StateOfTenant {
    fn live_lock(&self, name: &str, now: u64) -> Option<&Lock> {
        self.locks.get(name).filter(|l| l.expires_at > now)
    }

    fn counter(&self, collection: &str, key: &str, now: u64) -> i64 {
        self.counters
            .get(&(collection.to_owned(), key.to_owned()))
            .filter(|c| c.expires_at.is_none_or(|at| at > now))
            .map_or(0, |c| c.value)
    }
}

/// State of every tenant, swept with the rest of the memory store.
pub struct MemoryState {
    memory: Arc<Memory>,
    state: Arc<PerTenant<StateOfTenant>>,
}

impl MemoryState {
    pub fn new(memory: &Arc<Memory>) -> Arc<Self> {
        Arc::new(Self {
            memory: memory.clone(),
            state: memory.tenant_state(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.memory.now_us() / 1000
    }
}

fn expiry(now: u64, ttl_ms: u64) -> Option<u64> {
    (ttl_ms > 0).then(|| now + ttl_ms)
}

#[async_trait]
impl Store for MemoryState {
    async fn put(
        &self,
        tenant: &Tenant,
        collection: &str,
        op: &PutOp,
        limits: WriteLimits,
    ) -> Result<PutOutcome, StoreError> {
        let now = self.now_ms();
        Ok(self.state.with(tenant, |state| {
            let c = state.collections.entry(collection.to_owned()).or_default();
            let current = c.live(&op.key, now).map_or(0, |d| d.version);
            if op.expected_version.is_some_and(|v| v != current) {
                return PutOutcome::Conflict { current };
            }
            // Counting live documents walks them; only do it near the bound.
            if current == 0 && c.docs.len() as u64 >= limits.max_docs {
                let count = c
                    .docs
                    .values()
                    .filter(|d| d.expires_at.is_none_or(|at| at > now))
                    .count() as u64;
                if count >= limits.max_docs {
                    return PutOutcome::Full { count };
                }
            }
            let version = c.record(&op.key, op.kind, limits.max_log_entries);
            c.docs.insert(
                op.key.clone(),
                StoredDoc {
                    value: op.value.clone(),
                    content_type: op.content_type.clone(),
                    version,
                    expires_at: expiry(now, op.ttl_ms),
                },
            );
            PutOutcome::Written { version }
        }))
    }

    async fn get_many(
        &self,
        tenant: &Tenant,
        collection: &str,
        keys: &[String],
    ) -> Result<Vec<Option<Doc>>, StoreError> {
        let now = self.now_ms();
        Ok(self.state.with(tenant, |state| {
            let c = state.collections.get(collection);
            keys.iter()
                .map(|key| {
                    c.and_then(|c| c.live(key, now)).map(|d| Doc {
                        value: d.value.clone(),
                        content_type: d.content_type.clone(),
                        version: d.version,
                        ttl_ms: d.expires_at.map(|at| at - now),
                    })
                })
                .collect()
        }))
    }

    async fn delete(
        &self,
        tenant: &Tenant,
        collection: &str,
        key: &str,
        expected_version: Option<u64>,
        limits: WriteLimits,
    ) -> Result<DeleteOutcome, StoreError> {
        let now = self.now_ms();
        Ok(self.state.with(tenant, |state| {
            let Some(c) = state.collections.get_mut(collection) else {
                return DeleteOutcome::NotDeleted { current: 0 };
            };
            let current = c.live(key, now).map_or(0, |d| d.version);
            if current == 0 || expected_version.is_some_and(|v| v != current) {
                return DeleteOutcome::NotDeleted { current };
            }
            c.docs.remove(key);
            c.record(key, ChangeKind::Delete, limits.max_log_entries);
            DeleteOutcome::Deleted
        }))
    }

    async fn list(
        &self,
        tenant: &Tenant,
        collection: &str,
        range: &KeyRange,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let now = self.now_ms();
        Ok(self.state.with(tenant, |state| {
            let Some(c) = state.collections.get(collection) else {
                return Vec::new();
            };
            let start = match &range.after {
                Some(after) if after.as_str() >= range.prefix.as_str() => after.clone(),
                _ => range.prefix.clone(),
            };
            c.docs
                .range(start..)
                .filter(|(k, _)| range.contains(k))
                .take_while(|(k, _)| k.starts_with(&range.prefix))
                .filter(|(_, d)| d.expires_at.is_none_or(|at| at > now))
                .take(limit + 1)
                .map(|(k, _)| k.clone())
                .collect()
        }))
    }

    async fn count(&self, tenant: &Tenant, collection: &str) -> Result<u64, StoreError> {
        let now = self.now_ms();
        Ok(self.state.with(tenant, |state| {
            state.collections.get(collection).map_or(0, |c| {
                c.docs
                    .values()
                    .filter(|d| d.expires_at.is_none_or(|at| at > now))
                    .count() as u64
            })
        }))
    }

    async fn changes(
        &self,
        tenant: &Tenant,
        collection: &str,
        cursor: Option<&str>,
        max: usize,
    ) -> Result<Changes, StoreError> {
        let after = match cursor {
            None => None,
            Some(c) => Some(c.parse::<u64>().map_err(|_| {
                StoreError::internal(format!("a memory change cursor is a number, got {c}"))
            })?),
        };
        Ok(self.state.with(tenant, |state| {
            // Reading never creates a collection: watching a name leaves
            // nothing behind.
            let c = state.collections.get(collection);
            let seq = c.map_or(0, |c| c.seq);
            let Some(after) = after else {
                return Changes {
                    cursor: seq.to_string(),
                    last_seq: seq,
                    changes: Vec::new(),
                };
            };
            let changes: Vec<Change> = c
                .map(|c| {
                    c.log
                        .iter()
                        .filter(|ch| ch.seq > after)
                        .take(max)
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            Changes {
                cursor: changes.last().map_or(after, |ch| ch.seq).to_string(),
                last_seq: 0,
                changes,
            }
        }))
    }

    async fn increment(
        &self,
        tenant: &Tenant,
        collection: &str,
        key: &str,
        inc: Increment,
    ) -> Result<(bool, i64), StoreError> {
        let now = self.now_ms();
        Ok(self.state.with(tenant, |state| {
            let current = state.counter(collection, key, now);
            let value = current.saturating_add(inc.delta);
            let out_of_bounds = inc.min.is_some_and(|m| value < m)
                || inc.max.is_some_and(|m| value > m)
                || value.unsigned_abs() > super::COUNTER_LIMIT as u64;
            if out_of_bounds {
                return (false, current);
            }
            state.counters.insert(
                (collection.to_owned(), key.to_owned()),
                Counter {
                    value,
                    expires_at: expiry(now, inc.ttl_ms),
                },
            );
            (true, value)
        }))
    }

    async fn counters(
        &self,
        tenant: &Tenant,
        collection: &str,
        keys: &[String],
    ) -> Result<Vec<i64>, StoreError> {
        let now = self.now_ms();
        Ok(self.state.with(tenant, |state| {
            keys.iter()
                .map(|k| state.counter(collection, k, now))
                .collect()
        }))
    }

    async fn acquire_lock(
        &self,
        tenant: &Tenant,
        name: &str,
        lease_id: &str,
        ttl_ms: u64,
    ) -> Result<Acquire, StoreError> {
        let now = self.now_ms();
        Ok(self.state.with(tenant, |state| {
            if let Some(held) = state.live_lock(name, now) {
                return Acquire::Held {
                    retry_after_ms: held.expires_at - now,
                };
            }
            let fence = state.fences.entry(name.to_owned()).or_default();
            *fence += 1;
            let fencing_token = *fence;
            state.locks.insert(
                name.to_owned(),
                Lock {
                    lease_id: lease_id.to_owned(),
                    fence: fencing_token,
                    expires_at: now + ttl_ms,
                },
            );
            Acquire::Acquired { fencing_token }
        }))
    }

    async fn renew_lock(
        &self,
        tenant: &Tenant,
        name: &str,
        lease_id: &str,
        ttl_ms: u64,
    ) -> Result<Option<u64>, StoreError> {
        let now = self.now_ms();
        Ok(self.state.with(tenant, |state| {
            let lock = state
                .locks
                .get_mut(name)
                .filter(|l| l.expires_at > now && l.lease_id == lease_id)?;
            lock.expires_at = now + ttl_ms;
            Some(lock.fence)
        }))
    }

    async fn release_lock(
        &self,
        tenant: &Tenant,
        name: &str,
        lease_id: &str,
    ) -> Result<bool, StoreError> {
        let now = self.now_ms();
        Ok(self.state.with(tenant, |state| {
            let held = state
                .live_lock(name, now)
                .is_some_and(|l| l.lease_id == lease_id);
            if held {
                state.locks.remove(name);
            }
            held
        }))
    }
}
