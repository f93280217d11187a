//! What a session store does; the memory and Redis stores implement it.
//! `None` answers mean the session is unknown, expired or revoked. Stores
//! see token hashes only, and name their own keys.

use std::sync::Arc;

use async_trait::async_trait;

use super::{
    CreateOutcome, DataUpdate, NewSession, SessionRecord, TokenRef, UpdateOutcome,
    memory::MemorySessions, redis::RedisSessions,
};
use crate::keys::Tenant;
use crate::store::{Backend, StoreError};

#[async_trait]
pub trait Store: Send + Sync {
    /// Creates the session, evicting or refusing at the user's cap, in one
    /// atomic step.
    async fn create(&self, tenant: &Tenant, new: &NewSession) -> Result<CreateOutcome, StoreError>;
    /// The session; with `touch`, its idle expiry slides first.
    async fn get(
        &self,
        tenant: &Tenant,
        token: &TokenRef,
        touch: bool,
    ) -> Result<Option<SessionRecord>, StoreError>;
    async fn update(
        &self,
        tenant: &Tenant,
        token: &TokenRef,
        update: &DataUpdate,
        expected_version: Option<u64>,
        max_data_bytes: usize,
    ) -> Result<Option<UpdateOutcome>, StoreError>;
    /// Moves the session to `new`; `old` is dead once this returns.
    async fn rotate(
        &self,
        tenant: &Tenant,
        old: &TokenRef,
        new: &TokenRef,
    ) -> Result<Option<SessionRecord>, StoreError>;
    async fn revoke(&self, tenant: &Tenant, token: &TokenRef) -> Result<bool, StoreError>;
    /// The user's live sessions, oldest first.
    async fn list(&self, tenant: &Tenant, user_id: &str) -> Result<Vec<SessionRecord>, StoreError>;
    /// Revokes the user's sessions but `except` (a token hash); how many.
    async fn revoke_user(
        &self,
        tenant: &Tenant,
        user_id: &str,
        except: Option<&str>,
    ) -> Result<u64, StoreError>;
    async fn count(&self, tenant: &Tenant, user_id: &str) -> Result<u64, StoreError>;
    /// Stores a one-time token's purpose and subject; returns its expiry (us).
    async fn issue_one_time(
        &self,
        tenant: &Tenant,
        hash: &str,
        purpose: &str,
        subject: &str,
        ttl_us: u64,
    ) -> Result<u64, StoreError>;
    /// The subject, if the token is live and for `purpose`; it is then dead.
    async fn consume_one_time(
        &self,
        tenant: &Tenant,
        hash: &str,
        purpose: &str,
    ) -> Result<Option<String>, StoreError>;
}

/// The store on the application's backend.
pub fn build(backend: &Backend) -> Arc<dyn Store> {
    match backend {
        Backend::Memory(memory) => MemorySessions::new(memory),
        Backend::Redis(redis) => Arc::new(RedisSessions::new(redis.clone())),
    }
}
