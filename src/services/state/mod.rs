//! Durable state: versioned documents in collections, exact counters, and
//! locks with fencing tokens. `settings.rs` bounds requests; `grpc.rs`
//! converts the wire; `store.rs` is what the memory and Redis stores
//! implement; `patch.rs` is JSON Merge Patch and JSON Pointer reads.
//!
//! A collection's documents, index, write counter and change log share one
//! hash slot, so every document operation is one script on one slot. Every
//! write takes the collection's next *write number*; a document's version
//! is the number of the write that made it, so versions only grow, per key
//! and per collection, across deletes and re-creations. The change log
//! records every numbered write, so a watcher that sees a number missing
//! knows it fell behind the (bounded) log.
//!
//! Locks are leases: a random lease id proves the holder, a TTL frees the
//! lock when the holder dies, and a per-lock counter that never expires
//! hands each acquisition a larger fencing token.

mod grpc;
mod memory;
pub mod patch;
mod redis;
pub mod settings;
pub mod store;

pub use settings::Settings;

use crate::keys::Space;
use crate::registry::{Module, RegisterError, Registrar};
use crate::validate::FieldViolation;

/// Documents and each collection's index, expiry index, write counter and
/// change log, tagged by the collection.
pub const DOC_SPACE: Space = Space::durable_unless_ttl("st");
/// Counters, tagged by the collection.
pub const COUNTER_SPACE: Space = Space::durable_unless_ttl("sc");
/// Held locks: always with the lease's TTL.
pub const LOCK_SPACE: Space = Space::expiring("lk");
/// Each lock's fencing counter: kept, so tokens keep growing after the lock
/// is released or expires.
pub const FENCE_SPACE: Space = Space::durable("lkf");

/// Lease ids are 128 random bits, hex-encoded.
pub const LEASE_ID_LEN: usize = 32;
/// Counters stay within ±2^53, exact in Lua's numbers.
pub const COUNTER_LIMIT: i64 = 1 << 53;

pub struct Service;

impl Module for Service {
    const NAME: &'static str = "state";
    type Settings = Settings;
    const SPACES: &'static [Space] = &[DOC_SPACE, COUNTER_SPACE, LOCK_SPACE, FENCE_SPACE];

    fn register(settings: &Settings, registrar: &mut Registrar<'_>) -> Result<(), RegisterError> {
        let store = store::build(registrar.backend());
        registrar.add(grpc::Handler::new(store, settings.clone()));
        Ok(())
    }
}

/// A collection or lock name: 1 to 128 bytes of `[A-Za-z0-9_.:-]`.
pub fn name(value: &str, field: &str) -> Result<(), FieldViolation> {
    crate::validate::name(value, field)
}

/// What a write did to a document, as the change log records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Put,
    Patch,
    Delete,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Put => "put",
            ChangeKind::Patch => "patch",
            ChangeKind::Delete => "delete",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "put" => ChangeKind::Put,
            "patch" => ChangeKind::Patch,
            "delete" => ChangeKind::Delete,
            _ => return None,
        })
    }
}

/// A document as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doc {
    pub value: Vec<u8>,
    pub content_type: String,
    pub version: u64,
    /// Time left, when the document expires.
    pub ttl_ms: Option<u64>,
}

/// A validated write of a whole document.
#[derive(Debug, Clone)]
pub struct PutOp {
    pub key: String,
    pub value: Vec<u8>,
    pub content_type: String,
    /// `Some(0)`: only if absent.
    pub expected_version: Option<u64>,
    /// 0: durable.
    pub ttl_ms: u64,
    pub kind: ChangeKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Written {
        version: u64,
    },
    /// The document is at another version (0: absent); nothing changed.
    Conflict {
        current: u64,
    },
    /// A new document would pass `state.max_docs_per_collection`.
    Full {
        count: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    Deleted,
    /// Absent, or at another version than expected; nothing changed.
    NotDeleted {
        current: u64,
    },
}

/// Where a collection's change log stands, and the changes after a cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Pass back to read what follows.
    pub cursor: String,
    /// With no cursor given: the last write number (what follows is next).
    pub last_seq: u64,
    pub changes: Vec<Change>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key: String,
    pub kind: ChangeKind,
    /// The write number; the new version for a put or patch.
    pub seq: u64,
}

/// A validated counter increment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Increment {
    pub delta: i64,
    /// 0: durable.
    pub ttl_ms: u64,
    pub min: Option<i64>,
    pub max: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquire {
    Acquired { fencing_token: u64 },
    Held { retry_after_ms: u64 },
}

pub fn is_valid_lease_id(id: &str) -> bool {
    crate::random::is_hex(id, LEASE_ID_LEN)
}

/// A fresh lease id: 128 random bits.
pub fn new_lease_id() -> Result<String, getrandom::Error> {
    crate::random::hex(LEASE_ID_LEN / 2)
}

/// The lexicographic range a `List` page covers: keys starting with
/// `prefix`, after `cursor` (the previous page's last key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    pub prefix: String,
    pub after: Option<String>,
}

impl KeyRange {
    /// Whether `key` is in the range.
    pub fn contains(&self, key: &str) -> bool {
        key.starts_with(&self.prefix) && self.after.as_deref().is_none_or(|a| key > a)
    }
}
