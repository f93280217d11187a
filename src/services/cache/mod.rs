//! Caching: what an entry is, what a write may require (absent, present, a
//! version, a lease). `settings.rs` bounds requests; `grpc.rs` converts the
//! wire; `store.rs` is what the memory and Redis stores implement.
//!
//! Entries have a fresh period (`ttl`) and an optional stale period after it
//! (`stale_ttl`) during which they are still served, marked stale. Leases
//! (memcache-style) let exactly one caller recompute a missing or stale
//! value; any other write, a Delete or an invalidation of the entry's tags
//! voids the lease, so a value computed from old data cannot land late.

mod entry;
mod grpc;
mod memory;
mod redis;
pub mod settings;
pub mod store;

pub use settings::Settings;

use crate::keys::Space;
use crate::registry::{Module, RegisterError, Registrar};

/// Entries and their leases, tagged by the caller's key.
pub const ENTRY_SPACE: Space = Space::expiring("c");
/// Tag indexes, tagged by the tag (a different slot than entries).
pub const TAG_SPACE: Space = Space::expiring("ct");

/// How long an invalidation is remembered, to void leases granted before
/// it; longer than any lease may live.
pub const TAG_INVALIDATION_MEMORY_US: u64 = 3600 * 1_000_000;
/// Tag index entries outlive their entry by this much.
pub const TAG_INDEX_SLACK_US: u64 = 60_000_000;
/// The longest a caller is told to wait for someone else's lease.
pub const MAX_WAIT_HINT_US: u64 = 100_000;
/// Lease tokens are 128 random bits, hex-encoded.
pub const LEASE_TOKEN_LEN: usize = 32;

pub struct Service;

impl Module for Service {
    const NAME: &'static str = "cache";
    type Settings = Settings;
    const SPACES: &'static [Space] = &[ENTRY_SPACE, TAG_SPACE];

    fn register(settings: &Settings, registrar: &mut Registrar<'_>) -> Result<(), RegisterError> {
        let store = store::build(registrar.backend());
        registrar.add(grpc::Handler::new(store, settings.clone()));
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    Always,
    IfAbsent,
    IfPresent,
}

impl Condition {
    pub fn code(self) -> u8 {
        match self {
            Condition::Always => 0,
            Condition::IfAbsent => 1,
            Condition::IfPresent => 2,
        }
    }
}

/// A validated write.
#[derive(Debug, Clone)]
pub struct SetOp {
    pub key: String,
    pub value: Vec<u8>,
    pub content_type: String,
    pub ttl_us: u64,
    pub stale_us: u64,
    pub condition: Condition,
    pub expected_version: Option<u64>,
    pub tags: Vec<String>,
    pub lease_token: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOutcome {
    Stored,
    ConditionFailed,
    VersionMismatch,
    LeaseInvalid,
}

impl SetOutcome {
    pub fn from_code(code: i64) -> Option<Self> {
        Some(match code {
            1 => SetOutcome::Stored,
            2 => SetOutcome::ConditionFailed,
            3 => SetOutcome::VersionMismatch,
            4 => SetOutcome::LeaseInvalid,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetResult {
    pub outcome: SetOutcome,
    /// The entry's version after the call, 0 if there is none.
    pub version: u64,
}

/// An entry as read, with its times relative to the read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub value: Vec<u8>,
    pub content_type: String,
    pub version: u64,
    /// Fresh time left; 0 when stale.
    pub ttl_us: u64,
    pub stale: bool,
    /// Time left until the entry is gone.
    pub expires_in_us: u64,
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseResult {
    Hit(Found),
    Leased { token: String, stale: Option<Found> },
    Stale(Found),
    Wait { retry_after_us: u64 },
}

/// Tags travel to Redis joined by newlines (tags cannot contain one).
pub fn join_tags(tags: &[String]) -> String {
    tags.join("\n")
}

pub fn split_tags(joined: &str) -> Vec<String> {
    if joined.is_empty() {
        Vec::new()
    } else {
        joined.split('\n').map(str::to_owned).collect()
    }
}

pub fn is_valid_lease_token(token: &str) -> bool {
    crate::random::is_hex(token, LEASE_TOKEN_LEN)
}

/// A fresh lease token: 128 random bits.
pub fn new_lease_token() -> Result<String, getrandom::Error> {
    crate::random::hex(LEASE_TOKEN_LEN / 2)
}
