//! What a flag store does; the memory and Redis stores implement it. Flag
//! sets are durable data: no TTL, every change versioned and audited.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::registry::ChangeType;
use crate::keys::Tenant;
use crate::store::{Backend, StoreError};

/// One flag as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredFlag {
    pub key: String,
    pub definition: String,
    pub version: u64,
}

/// A flag set as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSet {
    pub name: String,
    /// Bumped by every change of the set.
    pub version: u64,
    /// The document-level part: metadata and `$evaluators`, as JSON.
    pub meta: String,
    pub flags: Vec<StoredFlag>,
    /// The SHA-256 of the source file last imported into it, if any.
    pub source_sha: Option<String>,
}

/// A write of one flag.
#[derive(Debug, Clone)]
pub enum Write {
    Put(String),
    Delete,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WriteOutcome {
    /// False when `expected_version` did not match (or a delete found
    /// nothing): nothing changed.
    pub written: bool,
    /// The flag's version after the call; 0 when it does not exist.
    pub version: u64,
    pub set_version: u64,
}

/// Who changed what, for the audit trail.
#[derive(Debug, Clone)]
pub struct Actor<'a> {
    pub action: &'a str,
    pub who: &'a str,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub id: String,
    pub at_us: u64,
    pub key: String,
    pub action: String,
    pub before: String,
    pub after: String,
    pub actor: String,
    pub version: u64,
}

#[async_trait]
pub trait Store: Send + Sync {
    /// Every flag set's name and version.
    async fn versions(&self, tenant: &Tenant) -> Result<Vec<(String, u64)>, StoreError>;
    async fn load(&self, tenant: &Tenant, set: &str) -> Result<Option<StoredSet>, StoreError>;
    /// One flag's definition and version.
    async fn get(
        &self,
        tenant: &Tenant,
        set: &str,
        key: &str,
    ) -> Result<Option<StoredFlag>, StoreError>;
    /// Writes or deletes one flag if it is at `expected` (0: absent).
    async fn write(
        &self,
        tenant: &Tenant,
        set: &str,
        key: &str,
        write: Write,
        expected: Option<u64>,
        actor: Actor<'_>,
    ) -> Result<WriteOutcome, StoreError>;
    /// Writes a whole document; with `replace`, deletes flags it does not
    /// name. Answers the set's version and what changed.
    #[allow(clippy::too_many_arguments)]
    async fn import(
        &self,
        tenant: &Tenant,
        set: &str,
        meta: &str,
        flags: &[(String, String)],
        replace: bool,
        source_sha: Option<&str>,
        actor: Actor<'_>,
    ) -> Result<(u64, Vec<(String, ChangeType)>), StoreError>;
    /// Audit entries, newest first, older than `before` if given.
    async fn audit(
        &self,
        tenant: &Tenant,
        set: &str,
        limit: usize,
        before: Option<&str>,
    ) -> Result<Vec<AuditEntry>, StoreError>;
    /// Notices of changes made by any replica: `(tenant, set)`. `None`
    /// where the store has no such channel (the periodic resync then is
    /// what converges).
    fn notices(&self) -> Option<mpsc::Receiver<(String, String)>>;
}

/// The store on the application's backend.
pub fn build(backend: &Backend, max_audit: usize) -> Arc<dyn Store> {
    match backend {
        Backend::Memory(memory) => super::memory::MemoryFlags::new(memory, max_audit),
        Backend::Redis(redis) => Arc::new(super::redis::RedisFlags::new(redis.clone(), max_audit)),
    }
}
