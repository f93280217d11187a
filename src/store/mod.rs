//! Storage behind one trait per capability, with two implementations chosen
//! at start-up: [`redis::RedisStore`] when `redis.url` is set, otherwise
//! [`memory::MemoryStore`] (per process, for development and tests).

pub mod memory;
pub mod redis;

use std::sync::Arc;

use async_trait::async_trait;

use crate::cache::{Found, LeaseResult, SetOp, SetResult};
use crate::ratelimit::{Decision, RateCheck};
use crate::session::{
    CreateOutcome, DataUpdate, NewSession, SessionRecord, TokenRef, UpdateOutcome,
};

/// Why the store could not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Unreachable, too slow, or refusing for now: the caller may retry.
    #[error("{0}")]
    Unavailable(String),
    /// The store answered something we cannot read: a bug on our side.
    #[error("{0}")]
    Internal(String),
}

/// Occupancy of a connection pool, for metrics.
#[derive(Debug, Clone, Copy)]
pub struct PoolStatus {
    pub size: usize,
    pub in_use: usize,
    pub waiting: usize,
}

/// Liveness of the backing store, polled by the health probe.
#[async_trait]
pub trait StoreHealth: Send + Sync {
    async fn ping(&self) -> Result<(), StoreError>;

    /// The connection pool's occupancy, where there is a pool.
    fn pool_status(&self) -> Option<PoolStatus> {
        None
    }
}

#[async_trait]
pub trait RateLimitStore: Send + Sync {
    /// Applies independent checks atomically each, answered in order.
    async fn check(&self, checks: &[RateCheck]) -> Result<Vec<Decision>, StoreError>;
    /// Forgets the state behind `key`.
    async fn reset(&self, key: &str) -> Result<(), StoreError>;
}

/// Cache entries by caller key; the store names its own keys.
#[async_trait]
pub trait CacheStore: Send + Sync {
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Found>>, StoreError>;
    async fn set_many(&self, ops: &[SetOp]) -> Result<Vec<SetResult>, StoreError>;
    /// Deletes the entry and its lease; true if an entry was there.
    async fn delete(&self, key: &str) -> Result<bool, StoreError>;
    /// Deletes every entry carrying any of `tags`; returns how many.
    async fn invalidate_tags(&self, tags: &[String]) -> Result<u64, StoreError>;
    /// Hit, or a lease granted under `new_token`, or stale, or wait.
    async fn get_or_lease(
        &self,
        key: &str,
        lease_ttl_us: u64,
        new_token: &str,
    ) -> Result<LeaseResult, StoreError>;
}

/// Sessions by token hash, indexed per user; one-time tokens by hash.
/// `None` answers mean the session is unknown, expired or revoked.
#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Creates the session, evicting or refusing at the user's cap, in one
    /// atomic step.
    async fn create(&self, new: &NewSession) -> Result<CreateOutcome, StoreError>;
    /// The session; with `touch`, its idle expiry slides first.
    async fn get(&self, token: &TokenRef, touch: bool)
    -> Result<Option<SessionRecord>, StoreError>;
    async fn update(
        &self,
        token: &TokenRef,
        update: &DataUpdate,
        expected_version: Option<u64>,
        max_data_bytes: usize,
    ) -> Result<Option<UpdateOutcome>, StoreError>;
    /// Moves the session to `new`; `old` is dead once this returns.
    async fn rotate(
        &self,
        old: &TokenRef,
        new: &TokenRef,
    ) -> Result<Option<SessionRecord>, StoreError>;
    async fn revoke(&self, token: &TokenRef) -> Result<bool, StoreError>;
    /// The user's live sessions, oldest first.
    async fn list(&self, user_tag: &str, user_id: &str) -> Result<Vec<SessionRecord>, StoreError>;
    /// Revokes the user's sessions but `except` (a token hash); returns how many.
    async fn revoke_user(
        &self,
        user_tag: &str,
        user_id: &str,
        except: Option<&str>,
    ) -> Result<u64, StoreError>;
    async fn count(&self, user_tag: &str, user_id: &str) -> Result<u64, StoreError>;
    /// Stores a one-time token's purpose and subject; returns its expiry (us).
    async fn issue_one_time(
        &self,
        hash: &str,
        purpose: &str,
        subject: &str,
        ttl_us: u64,
    ) -> Result<u64, StoreError>;
    /// The subject, if the token is live and for `purpose`; it is then dead.
    async fn consume_one_time(
        &self,
        hash: &str,
        purpose: &str,
    ) -> Result<Option<String>, StoreError>;
}

/// The capabilities of one backing store, shared by all services.
#[derive(Clone)]
pub struct Stores {
    pub kind: &'static str,
    pub health: Arc<dyn StoreHealth>,
    pub ratelimit: Arc<dyn RateLimitStore>,
    pub cache: Arc<dyn CacheStore>,
    pub sessions: Arc<dyn SessionStore>,
}

impl Stores {
    pub fn memory(store: Arc<memory::MemoryStore>) -> Self {
        Self {
            kind: "memory",
            health: store.clone(),
            ratelimit: store.clone(),
            cache: store.clone(),
            sessions: store,
        }
    }

    pub fn redis(store: Arc<redis::RedisStore>) -> Self {
        Self {
            kind: "redis",
            health: store.clone(),
            ratelimit: store.clone(),
            cache: store.clone(),
            sessions: store,
        }
    }
}
