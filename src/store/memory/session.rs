use std::collections::HashMap;

use async_trait::async_trait;

use super::MemoryStore;
use crate::session::{
    CreateOutcome, DataUpdate, NewSession, OnLimit, SessionRecord, TokenRef, UpdateOutcome,
    data_bytes,
};
use crate::store::{SessionStore, StoreError};

struct OneTime {
    purpose: String,
    subject: String,
    expires_at: u64,
}

/// All session state under one lock, as one Redis script sees its slot.
#[derive(Default)]
pub(crate) struct SessionState {
    /// token hash → session.
    sessions: HashMap<String, SessionRecord>,
    /// user id → token hashes, oldest first.
    by_user: HashMap<String, Vec<String>>,
    one_time: HashMap<String, OneTime>,
}

impl SessionState {
    pub(crate) fn sweep(&mut self, now: u64) {
        self.sessions.retain(|_, s| s.expires_at_us() > now);
        let sessions = &self.sessions;
        self.by_user.retain(|_, hashes| {
            hashes.retain(|h| sessions.contains_key(h));
            !hashes.is_empty()
        });
        self.one_time.retain(|_, t| t.expires_at > now);
    }

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
impl SessionStore for MemoryStore {
    async fn create(&self, new: &NewSession) -> Result<CreateOutcome, StoreError> {
        let now = self.clock.now_us();
        let mut state = self.session_state();
        let mut hashes = state.user_hashes(&new.user_id, now);
        let mut evicted_session_ids = Vec::new();
        while hashes.len() >= new.max_sessions as usize {
            if new.on_limit == OnLimit::Reject {
                return Ok(CreateOutcome::LimitReached);
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
        Ok(CreateOutcome::Created {
            session,
            evicted_session_ids,
        })
    }

    async fn get(
        &self,
        token: &TokenRef,
        touch: bool,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let now = self.clock.now_us();
        let mut state = self.session_state();
        Ok(state.live(&token.hash, now).map(|s| {
            if touch {
                s.last_seen_us = now;
            }
            s.clone()
        }))
    }

    async fn update(
        &self,
        token: &TokenRef,
        update: &DataUpdate,
        expected_version: Option<u64>,
        max_data_bytes: usize,
    ) -> Result<Option<UpdateOutcome>, StoreError> {
        let now = self.clock.now_us();
        let mut state = self.session_state();
        let Some(session) = state.live(&token.hash, now) else {
            return Ok(None);
        };
        if expected_version.is_some_and(|v| v != session.version) {
            return Ok(Some(UpdateOutcome::VersionMismatch(session.clone())));
        }
        let mut data = session.data.clone();
        update.apply(&mut data);
        if data_bytes(&data) > max_data_bytes {
            return Ok(Some(UpdateOutcome::TooLarge));
        }
        session.data = data;
        session.version += 1;
        Ok(Some(UpdateOutcome::Updated(session.clone())))
    }

    async fn rotate(
        &self,
        old: &TokenRef,
        new: &TokenRef,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let now = self.clock.now_us();
        let mut state = self.session_state();
        if state.live(&old.hash, now).is_none() {
            return Ok(None);
        }
        let Some(session) = state.sessions.remove(&old.hash) else {
            return Ok(None);
        };
        if let Some(hashes) = state.by_user.get_mut(&session.user_id) {
            for h in hashes.iter_mut().filter(|h| **h == old.hash) {
                h.clone_from(&new.hash);
            }
        }
        state.sessions.insert(new.hash.clone(), session.clone());
        Ok(Some(session))
    }

    async fn revoke(&self, token: &TokenRef) -> Result<bool, StoreError> {
        let now = self.clock.now_us();
        let mut state = self.session_state();
        let live = state.live(&token.hash, now).is_some();
        state.remove(&token.hash);
        Ok(live)
    }

    async fn list(&self, _tag: &str, user_id: &str) -> Result<Vec<SessionRecord>, StoreError> {
        let now = self.clock.now_us();
        let mut state = self.session_state();
        let hashes = state.user_hashes(user_id, now);
        Ok(hashes
            .iter()
            .filter_map(|h| state.sessions.get(h).cloned())
            .collect())
    }

    async fn revoke_user(
        &self,
        _tag: &str,
        user_id: &str,
        except: Option<&str>,
    ) -> Result<u64, StoreError> {
        let now = self.clock.now_us();
        let mut state = self.session_state();
        let mut revoked = 0;
        for hash in state.user_hashes(user_id, now) {
            if Some(hash.as_str()) != except && state.remove(&hash).is_some() {
                revoked += 1;
            }
        }
        Ok(revoked)
    }

    async fn count(&self, _tag: &str, user_id: &str) -> Result<u64, StoreError> {
        let now = self.clock.now_us();
        Ok(self.session_state().user_hashes(user_id, now).len() as u64)
    }

    async fn issue_one_time(
        &self,
        hash: &str,
        purpose: &str,
        subject: &str,
        ttl_us: u64,
    ) -> Result<u64, StoreError> {
        let expires_at = self.clock.now_us() + ttl_us;
        self.session_state().one_time.insert(
            hash.to_owned(),
            OneTime {
                purpose: purpose.to_owned(),
                subject: subject.to_owned(),
                expires_at,
            },
        );
        Ok(expires_at)
    }

    async fn consume_one_time(
        &self,
        hash: &str,
        purpose: &str,
    ) -> Result<Option<String>, StoreError> {
        let now = self.clock.now_us();
        let mut state = self.session_state();
        let usable = state
            .one_time
            .get(hash)
            .is_some_and(|t| t.expires_at > now && t.purpose == purpose);
        Ok(if usable {
            state.one_time.remove(hash).map(|t| t.subject)
        } else {
            None
        })
    }
}
