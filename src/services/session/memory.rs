//! Sessions in process memory: the same rules as the Lua scripts, one
//! state per tenant under one lock.

use std::{collections::HashMap, sync::Arc};

use async_trait::async_trait;

use super::store::Store;
use super::{
    CreateOutcome, DataUpdate, NewSession, OnLimit, SessionRecord, TokenRef, UpdateOutcome,
    data_bytes,
};
use crate::keys::Tenant;
use crate::store::StoreError;
use crate::store::memory::{Expiring, Memory, PerTenant};

struct OneTime {
    purpose: String,
    subject: String,
    expires_at: u64,
}

/// All session state under one lock, as one Redis script sees its slot.
#[derive(Default)]
struct SessionState {
    /// token hash → session.
    sessions: HashMap<String, SessionRecord>,
    /// user id → token hashes, oldest first.
    by_user: HashMap<String, Vec<String>>,
    one_time: HashMap<String, OneTime>,
}

impl Expiring for SessionState {
    fn is_empty(&self) -> bool {
        self.sessions.is_empty() && self.by_user.is_empty() && self.one_time.is_empty()
    }

    fn sweep(&mut self, now: u64) {
        self.sessions.retain(|_, s| s.expires_at_us() > now);
        let sessions = &self.sessions;
        self.by_user.retain(|_, hashes| {
            hashes.retain(|h| sessions.contains_key(h));
            !hashes.is_empty()
        });
        self.one_time.retain(|_, t| t.expires_at > now);
    }
}

impl SessionState {
    fn live(&mut self, hash: &str, now: u64) -> Option<&mut SessionRecord> {
        if self.sessions.get(hash)?.expires_at_us() <= now {
            self.sessions.remove(hash);
            return None;
        }
        self.sessions.get_mut(hash)
    }

    /// The user's live token hashes, oldest first; drops dead ones.
    fn user_hashes(&mut self, user_id: &str, now: u64) -> Vec<String> {
        let Some(hashes) = self.by_user.get(user_id) else {
            return Vec::new();
        };
        let live: Vec<String> = hashes
            .iter()
            .filter(|h| {
                self.sessions
                    .get(*h)
                    .is_some_and(|s| s.expires_at_us() > now)
            })
            .cloned()
            .collect();
        self.by_user.insert(user_id.to_owned(), live.clone());
        live
    }

    fn remove(&mut self, hash: &str) -> Option<SessionRecord> {
        let session = self.sessions.remove(hash)?;
        if let Some(hashes) = self.by_user.get_mut(&session.user_id) {
            hashes.retain(|h| h != hash);
        }
        Some(session)
    }
}

#[async_trait]
impl Store for MemorySessions {
    async fn create(&self, tenant: &Tenant, new: &NewSession) -> Result<CreateOutcome, StoreError> {
        let now = self.memory.now_us();
        Ok(self.state.with(tenant, |state| state.create(new, now)))
    }

    async fn get(
        &self,
        tenant: &Tenant,
        token: &TokenRef,
        touch: bool,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let now = self.memory.now_us();
        Ok(self.state.with(tenant, |state| {
            state.live(&token.hash, now).map(|s| {
                if touch {
                    s.last_seen_us = now;
                }
                s.clone()
            })
        }))
    }

    async fn update(
        &self,
        tenant: &Tenant,
        token: &TokenRef,
        update: &DataUpdate,
        expected_version: Option<u64>,
        max_data_bytes: usize,
    ) -> Result<Option<UpdateOutcome>, StoreError> {
        let now = self.memory.now_us();
        Ok(self.state.with(tenant, |state| {
            state.update(&token.hash, update, expected_version, max_data_bytes, now)
        }))
    }

    async fn rotate(
        &self,
        tenant: &Tenant,
        old: &TokenRef,
        new: &TokenRef,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let now = self.memory.now_us();
        Ok(self.state.with(tenant, |state| state.rotate(old, new, now)))
    }

    async fn revoke(&self, tenant: &Tenant, token: &TokenRef) -> Result<bool, StoreError> {
        let now = self.memory.now_us();
        Ok(self.state.with(tenant, |state| {
            let live = state.live(&token.hash, now).is_some();
            state.remove(&token.hash);
            live
        }))
    }

    async fn list(&self, tenant: &Tenant, user_id: &str) -> Result<Vec<SessionRecord>, StoreError> {
        let now = self.memory.now_us();
        Ok(self.state.with(tenant, |state| {
            let hashes = state.user_hashes(user_id, now);
            hashes
                .iter()
                .filter_map(|h| state.sessions.get(h).cloned())
                .collect()
        }))
    }

    async fn revoke_user(
        &self,
        tenant: &Tenant,
        user_id: &str,
        except: Option<&str>,
    ) -> Result<u64, StoreError> {
        let now = self.memory.now_us();
        Ok(self.state.with(tenant, |state| {
            let mut revoked = 0;
            for hash in state.user_hashes(user_id, now) {
                if Some(hash.as_str()) != except && state.remove(&hash).is_some() {
                    revoked += 1;
                }
            }
            revoked
        }))
    }

    async fn count(&self, tenant: &Tenant, user_id: &str) -> Result<u64, StoreError> {
        let now = self.memory.now_us();
        Ok(self
            .state
            .with(tenant, |state| state.user_hashes(user_id, now).len() as u64))
    }

    async fn issue_one_time(
        &self,
        tenant: &Tenant,
        hash: &str,
        purpose: &str,
        subject: &str,
        ttl_us: u64,
    ) -> Result<u64, StoreError> {
        let expires_at = self.memory.now_us() + ttl_us;
        self.state.with(tenant, |state| {
            state.one_time.insert(
                hash.to_owned(),
                OneTime {
                    purpose: purpose.to_owned(),
                    subject: subject.to_owned(),
                    expires_at,
                },
            )
        });
        Ok(expires_at)
    }

    async fn consume_one_time(
        &self,
        tenant: &Tenant,
        hash: &str,
        purpose: &str,
    ) -> Result<Option<String>, StoreError> {
        let now = self.memory.now_us();
        Ok(self.state.with(tenant, |state| {
            let usable = state
                .one_time
                .get(hash)
                .is_some_and(|t| t.expires_at > now && t.purpose == purpose);
            if usable {
                state.one_time.remove(hash).map(|t| t.subject)
            } else {
                None
            }
        }))
    }
}

impl SessionState {
    fn create(&mut self, new: &NewSession, now: u64) -> CreateOutcome {
        let state = self;
        let mut hashes = state.user_hashes(&new.user_id, now);
        let mut evicted_session_ids = Vec::new();
        while hashes.len() >= new.max_sessions as usize {
            if new.on_limit == OnLimit::Reject {
                return CreateOutcome::LimitReached;
            }
            let oldest = hashes.remove(0);
            if let Some(s) = state.remove(&oldest) {
                evicted_session_ids.push(s.session_id);
            }
        }
        let session = SessionRecord {
            session_id: new.session_id.clone(),
            user_id: new.user_id.clone(),
            data: new.data.clone(),
            version: 1,
            created_us: now,
            last_seen_us: now,
            idle_us: new.idle_us,
            absolute_at_us: now + new.absolute_us,
            client_ip: new.client_ip.clone(),
            user_agent: new.user_agent.clone(),
        };
        state
            .sessions
            .insert(new.token.hash.clone(), session.clone());
        state
            .by_user
            .entry(new.user_id.clone())
            .or_default()
            .push(new.token.hash.clone());
        CreateOutcome::Created {
            session,
            evicted_session_ids,
        }
    }

    fn update(
        &mut self,
        hash: &str,
        update: &DataUpdate,
        expected_version: Option<u64>,
        max_data_bytes: usize,
        now: u64,
    ) -> Option<UpdateOutcome> {
        let session = self.live(hash, now)?;
        if expected_version.is_some_and(|v| v != session.version) {
            return Some(UpdateOutcome::VersionMismatch(session.clone()));
        }
        let mut data = session.data.clone();
        update.apply(&mut data);
        if data_bytes(&data) > max_data_bytes {
            return Some(UpdateOutcome::TooLarge);
        }
        session.data = data;
        session.version += 1;
        Some(UpdateOutcome::Updated(session.clone()))
    }

    fn rotate(&mut self, old: &TokenRef, new: &TokenRef, now: u64) -> Option<SessionRecord> {
        self.live(&old.hash, now)?;
        let session = self.sessions.remove(&old.hash)?;
        if let Some(hashes) = self.by_user.get_mut(&session.user_id) {
            for h in hashes.iter_mut().filter(|h| **h == old.hash) {
                h.clone_from(&new.hash);
            }
        }
        self.sessions.insert(new.hash.clone(), session.clone());
        Some(session)
    }
}

/// The sessions of every tenant, swept with the rest of the memory store.
pub struct MemorySessions {
    memory: Arc<Memory>,
    state: Arc<PerTenant<SessionState>>,
}

impl MemorySessions {
    pub fn new(memory: &Arc<Memory>) -> Arc<Self> {
        Arc::new(Self {
            memory: memory.clone(),
            state: memory.tenant_state(),
        })
    }
}
