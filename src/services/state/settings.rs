//! `state.*`: the bounds of every state request.

use std::time::Duration;

use super::COUNTER_LIMIT;
use crate::settings::{Problems, days, hours, join, ms, secs};
use crate::validate::{self, DurationRange, FieldViolation};

/// Longest content type, in bytes.
pub const MAX_CONTENT_TYPE_BYTES: usize = 255;
/// Longest JSON Pointer, in bytes.
pub const MAX_POINTER_BYTES: usize = 1024;
/// A `List` page when the caller gives no limit.
pub const DEFAULT_PAGE_SIZE: usize = 100;

crate::section! {
    /// Durable state: documents, counters and locks.
    pub struct Settings {
        /// Longest document or counter key, in bytes.
        pub max_key_bytes: usize = 512, range(1, 4096);
        /// Largest document, in bytes (after a patch too).
        pub max_value_bytes: usize = 1024 * 1024, range(1, 64 * 1024 * 1024);
        /// Most keys in one `GetMany` or `GetCounters`.
        pub max_batch: usize = 100, range(1, 10_000);
        /// Largest `List` page.
        pub max_page_size: usize = 1000, range(1, 10_000);
        /// Most documents in one collection; a `Put` of a new key past it is
        /// refused (RESOURCE_EXHAUSTED).
        pub max_docs_per_collection: u64 = 1_000_000, range(1, 1_000_000_000);
        /// Longest TTL a document or counter may be given.
        pub max_ttl: Duration = days(366), range(secs(1), days(3650));
        /// Longest lock lease.
        pub max_lock_ttl: Duration = hours(1), range(secs(1), days(1));
        /// Longest `AcquireLock` wait (the call's deadline bounds it too).
        pub max_lock_wait: Duration = secs(30), range(ms(0), secs(600));
        /// How often a `Watch` reads its collection's change log.
        pub watch_poll_interval: Duration = ms(100), range(ms(10), secs(10));
        /// Changes each collection's log keeps for watchers (about: Redis
        /// trims whole blocks); a watcher further behind gets
        /// RESOURCE_EXHAUSTED and must re-read.
        pub max_log_entries: u64 = 10_000, range(100, 10_000_000);
        /// Most `Watch` streams open at once on one instance.
        pub max_watches: usize = 1024, range(1, 1_000_000);
    }
    check = Settings::rules;
}

impl Settings {
    fn rules(&self, path: &str, problems: &mut Problems) {
        if self.max_ttl.as_millis() > u64::MAX as u128 {
            problems.push(join(path, "max_ttl"), "is too long");
        }
    }

    pub fn key(&self, key: &str, field: &str) -> Result<(), FieldViolation> {
        validate::key(key, field, self.max_key_bytes)?;
        if key.chars().any(char::is_control) {
            return Err(FieldViolation::new(
                field,
                "must not contain control characters",
            ));
        }
        Ok(())
    }

    pub fn keys(&self, keys: &[String], field: &str) -> Result<(), validate::Invalid> {
        validate::batch(keys.len(), field, self.max_batch, "state.max_batch")?;
        validate::each(keys, field, |k| self.key(k, "")).map(|_| ())
    }

    /// A `List`/`Watch` prefix: a key's bound, may be empty.
    pub fn prefix(&self, prefix: &str, field: &str) -> Result<(), FieldViolation> {
        if prefix.is_empty() {
            Ok(())
        } else {
            self.key(prefix, field)
        }
    }

    pub fn value(&self, value: &[u8], field: &str) -> Result<(), FieldViolation> {
        if value.len() > self.max_value_bytes {
            return Err(FieldViolation::new(
                field,
                format!(
                    "must be at most {} bytes (state.max_value_bytes), got {}",
                    self.max_value_bytes,
                    value.len()
                ),
            ));
        }
        Ok(())
    }

    pub fn content_type(&self, content_type: &str) -> Result<(), FieldViolation> {
        validate::text(content_type, "content_type", 0, MAX_CONTENT_TYPE_BYTES)
    }

    /// A document's or counter's TTL in ms; unset or zero: durable (0).
    pub fn ttl(&self, ttl: Option<Duration>) -> Result<u64, FieldViolation> {
        match ttl {
            None => Ok(0),
            Some(d) if d.is_zero() => Ok(0),
            Some(d) => Ok(DurationRange::up_to(self.max_ttl, "state.max_ttl").micros(
                Some(d),
                None,
                "ttl",
            )? / 1000),
        }
    }

    /// A `List` page size: 0 means the default.
    pub fn page_size(&self, limit: u32) -> Result<usize, FieldViolation> {
        match limit as usize {
            0 => Ok(DEFAULT_PAGE_SIZE.min(self.max_page_size)),
            n if n > self.max_page_size => Err(FieldViolation::new(
                "limit",
                format!(
                    "must be at most {} (state.max_page_size), got {n}",
                    self.max_page_size
                ),
            )),
            n => Ok(n),
        }
    }

    /// A lock lease: required, at most `state.max_lock_ttl`.
    pub fn lock_ttl(&self, ttl: Option<Duration>) -> Result<u64, FieldViolation> {
        Ok(
            DurationRange::up_to(self.max_lock_ttl, "state.max_lock_ttl")
                .micros(ttl, None, "ttl")?
                / 1000,
        )
    }

    /// How long to wait for a held lock; unset or 0: not at all.
    pub fn lock_wait(&self, wait: Option<Duration>) -> Result<Duration, FieldViolation> {
        let wait = wait.unwrap_or_default();
        if wait > self.max_lock_wait {
            return Err(FieldViolation::new(
                "wait",
                format!(
                    "must be at most {} (state.max_lock_wait), got {}",
                    validate::duration(self.max_lock_wait),
                    validate::duration(wait)
                ),
            ));
        }
        Ok(wait)
    }
}

/// A counter amount or bound: within ±2^53.
pub fn counter_amount(value: i64, field: &str) -> Result<i64, FieldViolation> {
    if value.unsigned_abs() > COUNTER_LIMIT as u64 {
        return Err(FieldViolation::new(
            field,
            format!("must be within ±2^53 ({COUNTER_LIMIT}), got {value}"),
        ));
    }
    Ok(value)
}
