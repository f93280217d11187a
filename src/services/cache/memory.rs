//! The cache in process memory: the same rules as the Lua scripts, one
//! state per tenant under one lock.

use std::{collections::HashMap, sync::Arc};

use async_trait::async_trait;

use super::store::Store;
use super::{
    Condition, Found, LeaseResult, MAX_WAIT_HINT_US, SetOp, SetOutcome, SetResult,
    TAG_INDEX_SLACK_US, TAG_INVALIDATION_MEMORY_US,
};
use crate::keys::Tenant;
use crate::store::StoreError;
use crate::store::memory::{Expiring, Memory, PerTenant};

struct Entry {
    value: Vec<u8>,
    content_type: String,
    version: u64,
    fresh_until: u64,
    expires_at: u64,
    tags: Vec<String>,
}

struct Lease {
    token: String,
    issued_at: u64,
    expires_at: u64,
}

/// All cache state under one lock: a write touches an entry, its lease and
/// its tags' indexes together, as one Redis script plus index updates do.
#[derive(Default)]
struct CacheState {
    entries: HashMap<String, Entry>,
    leases: HashMap<String, Lease>,
    /// tag → key → when that key's entry expires.
    tag_index: HashMap<String, HashMap<String, u64>>,
    /// tag → when it was last invalidated.
    tag_invalidated: HashMap<String, u64>,
}

impl Expiring for CacheState {
    fn sweep(&mut self, now: u64) {
        self.entries.retain(|_, e| e.expires_at > now);
        self.leases.retain(|_, l| l.expires_at > now);
        self.tag_index.retain(|_, keys| {
            keys.retain(|_, expires_at| *expires_at > now);
            !keys.is_empty()
        });
        self.tag_invalidated
            .retain(|_, at| *at + TAG_INVALIDATION_MEMORY_US > now);
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
            && self.leases.is_empty()
            && self.tag_index.is_empty()
            && self.tag_invalidated.is_empty()
    }
}

impl CacheState {
    fn live_entry(&self, key: &str, now: u64) -> Option<&Entry> {
        self.entries.get(key).filter(|e| e.expires_at > now)
    }

    fn live_lease(&self, key: &str, now: u64) -> Option<&Lease> {
        self.leases.get(key).filter(|l| l.expires_at > now)
    }

    fn found(&self, key: &str, now: u64) -> Option<Found> {
        self.live_entry(key, now).map(|e| Found {
            value: e.value.clone(),
            content_type: e.content_type.clone(),
            version: e.version,
            ttl_us: e.fresh_until.saturating_sub(now),
            stale: now >= e.fresh_until,
            expires_in_us: e.expires_at - now,
            tags: e.tags.clone(),
        })
    }

    fn set(&mut self, op: &SetOp, now: u64) -> SetResult {
        // Tags are indexed before any check, as the Redis store does in a
        // step of its own.
        let expires_at = now + op.ttl_us + op.stale_us;
        for tag in &op.tags {
            let keys = self.tag_index.entry(tag.clone()).or_default();
            keys.retain(|_, at| *at > now);
            keys.insert(op.key.clone(), expires_at + TAG_INDEX_SLACK_US);
        }
        let current = self.live_entry(&op.key, now).map(|e| e.version);
        let refuse = |outcome| SetResult {
            outcome,
            version: current.unwrap_or(0),
        };
        match (op.condition, current) {
            (Condition::IfAbsent, Some(_)) | (Condition::IfPresent, None) => {
                return refuse(SetOutcome::ConditionFailed);
            }
            _ => {}
        }
        if let Some(expected) = op.expected_version
            && current.unwrap_or(0) != expected
        {
            return refuse(SetOutcome::VersionMismatch);
        }
        if let Some(token) = &op.lease_token {
            let invalidated_at = op
                .tags
                .iter()
                .filter_map(|t| self.tag_invalidated.get(t).copied())
                .max()
                .unwrap_or(0);
            let valid = self
                .live_lease(&op.key, now)
                .is_some_and(|l| &l.token == token && l.issued_at > invalidated_at);
            if !valid {
                return refuse(SetOutcome::LeaseInvalid);
            }
        }
        // Any write voids an outstanding lease: its value would be older.
        self.leases.remove(&op.key);
        let version = (current.unwrap_or(0) + 1).max(now);
        self.entries.insert(
            op.key.clone(),
            Entry {
                value: op.value.clone(),
                content_type: op.content_type.clone(),
                version,
                fresh_until: now + op.ttl_us,
                expires_at,
                tags: op.tags.clone(),
            },
        );
        SetResult {
            outcome: SetOutcome::Stored,
            version,
        }
    }

    /// Tag indexes keep the key until it expires from them, as on Redis.
    fn delete(&mut self, key: &str, now: u64) -> bool {
        self.leases.remove(key);
        self.entries.remove(key).is_some_and(|e| e.expires_at > now)
    }
}

#[async_trait]
impl Store for MemoryCache {
    async fn get_many(
        &self,
        tenant: &Tenant,
        keys: &[String],
    ) -> Result<Vec<Option<Found>>, StoreError> {
        let now = self.memory.now_us();
        Ok(self.state.with(tenant, |state| {
            keys.iter().map(|k| state.found(k, now)).collect()
        }))
    }

    async fn set_many(&self, tenant: &Tenant, ops: &[SetOp]) -> Result<Vec<SetResult>, StoreError> {
        let now = self.memory.now_us();
        Ok(self.state.with(tenant, |state| {
            ops.iter().map(|op| state.set(op, now)).collect()
        }))
    }

    async fn delete(&self, tenant: &Tenant, key: &str) -> Result<bool, StoreError> {
        let now = self.memory.now_us();
        Ok(self.state.with(tenant, |state| state.delete(key, now)))
    }

    async fn invalidate_tags(&self, tenant: &Tenant, tags: &[String]) -> Result<u64, StoreError> {
        let now = self.memory.now_us();
        Ok(self.state.with(tenant, |state| state.invalidate(tags, now)))
    }

    async fn get_or_lease(
        &self,
        tenant: &Tenant,
        key: &str,
        lease_ttl_us: u64,
        new_token: &str,
    ) -> Result<LeaseResult, StoreError> {
        let now = self.memory.now_us();
        Ok(self.state.with(tenant, |state| {
            state.get_or_lease(key, lease_ttl_us, new_token, now)
        }))
    }
}

impl CacheState {
    fn invalidate(&mut self, tags: &[String], now: u64) -> u64 {
        let state = self;
        let mut invalidated = 0;
        for tag in tags {
            state.tag_invalidated.insert(tag.clone(), now);
            let keys = state.tag_index.remove(tag).unwrap_or_default();
            for key in keys.into_keys() {
                // Any lease is void: its holder may be computing a value
                // tagged so.
                state.leases.remove(&key);
                let tagged = state
                    .live_entry(&key, now)
                    .is_some_and(|e| e.tags.contains(tag));
                if tagged && state.delete(&key, now) {
                    invalidated += 1;
                }
            }
        }
        invalidated
    }

    fn get_or_lease(
        &mut self,
        key: &str,
        lease_ttl_us: u64,
        new_token: &str,
        now: u64,
    ) -> LeaseResult {
        let state = self;
        let found = state.found(key, now);
        if let Some(found) = &found
            && !found.stale
        {
            return LeaseResult::Hit(found.clone());
        }
        if let Some(lease) = state.live_lease(key, now) {
            return match found {
                Some(stale) => LeaseResult::Stale(stale),
                None => LeaseResult::Wait {
                    retry_after_us: (lease.expires_at - now).min(MAX_WAIT_HINT_US),
                },
            };
        }
        state.leases.insert(
            key.to_owned(),
            Lease {
                token: new_token.to_owned(),
                issued_at: now,
                expires_at: now + lease_ttl_us,
            },
        );
        LeaseResult::Leased {
            token: new_token.to_owned(),
            stale: found,
        }
    }
}

/// The cache of every tenant, swept with the rest of the memory store.
pub struct MemoryCache {
    memory: Arc<Memory>,
    state: Arc<PerTenant<CacheState>>,
}

impl MemoryCache {
    pub fn new(memory: &Arc<Memory>) -> Arc<Self> {
        Arc::new(Self {
            memory: memory.clone(),
            state: memory.tenant_state(),
        })
    }
}
