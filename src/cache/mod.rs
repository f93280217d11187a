//! Caching: what an entry is, what a write may require (absent, present, a
//! version, a lease), and how requests are validated.
//!
//! Entries have a fresh period (`ttl`) and an optional stale period after it
//! (`stale_ttl`) during which they are still served, marked stale. Leases
//! (memcache-style) let exactly one caller recompute a missing or stale
//! value; any other write, a Delete or an invalidation of the entry's tags
//! voids the lease, so a value computed from old data cannot land late.

use std::time::Duration;

use crate::error::FieldViolation;

/// Longest tag, in bytes.
pub const MAX_TAG_BYTES: usize = 128;
/// Lease tokens are 128 random bits, hex-encoded.
pub const LEASE_TOKEN_LEN: usize = 32;

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

/// Limits from configuration, applied to every request.
#[derive(Debug, Clone)]
pub struct Bounds {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    pub max_tags: usize,
    pub max_batch: usize,
    pub max_ttl: Duration,
    pub default_ttl: Option<Duration>,
    pub default_lease_ttl: Duration,
    pub max_lease_ttl: Duration,
}

impl Bounds {
    pub fn key(&self, key: &str, field: &str) -> Result<(), FieldViolation> {
        if key.is_empty() {
            return Err(FieldViolation::new(field, "must not be empty"));
        }
        if key.len() > self.max_key_bytes {
            return Err(FieldViolation::new(
                field,
                format!(
                    "must be at most {} bytes, got {}",
                    self.max_key_bytes,
                    key.len()
                ),
            ));
        }
        Ok(())
    }

    pub fn tags(&self, tags: &[String], field: &str) -> Result<(), FieldViolation> {
        if tags.len() > self.max_tags {
            return Err(FieldViolation::new(
                field,
                format!("at most {} tags, got {}", self.max_tags, tags.len()),
            ));
        }
        for (i, tag) in tags.iter().enumerate() {
            self.tag(tag, &format!("{field}[{i}]"))?;
        }
        Ok(())
    }

    /// Tags are joined by newlines on the way to Redis: no control chars.
    pub fn tag(&self, tag: &str, field: &str) -> Result<(), FieldViolation> {
        if tag.is_empty() || tag.len() > MAX_TAG_BYTES || tag.chars().any(char::is_control) {
            return Err(FieldViolation::new(
                field,
                format!("must be 1 to {MAX_TAG_BYTES} bytes without control characters"),
            ));
        }
        Ok(())
    }

    pub fn batch(&self, len: usize, field: &str) -> Result<(), FieldViolation> {
        if len == 0 {
            return Err(FieldViolation::new(field, "must not be empty"));
        }
        if len > self.max_batch {
            return Err(FieldViolation::new(
                field,
                format!("at most {} per call, got {len}", self.max_batch),
            ));
        }
        Ok(())
    }

    /// A TTL in microseconds: required unless a default applies.
    pub fn ttl(
        &self,
        value: Option<Duration>,
        default: Option<Duration>,
        allow_zero: bool,
        field: &str,
    ) -> Result<u64, FieldViolation> {
        let Some(ttl) = value.or(default) else {
            return Err(FieldViolation::new(
                field,
                "is required (no cache.default_ttl is configured)",
            ));
        };
        if ttl.is_zero() && allow_zero {
            return Ok(0);
        }
        if ttl < Duration::from_millis(1) || ttl > self.max_ttl {
            return Err(FieldViolation::new(
                field,
                format!(
                    "must be between 1ms and {} (cache.max_ttl)",
                    humantime::format_duration(self.max_ttl)
                ),
            ));
        }
        Ok(ttl.as_micros() as u64)
    }
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
    token.len() == LEASE_TOKEN_LEN && token.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A fresh lease token: 128 bits from the operating system's CSPRNG.
pub fn new_lease_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; LEASE_TOKEN_LEN / 2];
    getrandom::fill(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
