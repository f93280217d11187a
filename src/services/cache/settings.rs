//! `cache.*`: the bounds of every cache request.

use std::time::Duration;

use crate::settings::{Problems, days, join, ms, secs};
use crate::validate::{self, DurationRange, FieldViolation};

/// Longest tag, in bytes.
pub const MAX_TAG_BYTES: usize = 128;
/// Longest content type, in bytes.
pub const MAX_CONTENT_TYPE_BYTES: usize = 255;

crate::section! {
    /// Caching: the bounds of every request.
    pub struct Settings {
        /// Longest caller key, in bytes.
        pub max_key_bytes: usize = 512, range(1, 4096);
        /// Largest value, in bytes.
        pub max_value_bytes: usize = 1024 * 1024, range(1, 64 * 1024 * 1024);
        /// Most tags on one entry.
        pub max_tags: usize = 16, range(0, 256);
        /// Most keys in one `GetMany`, entries in one `SetMany`, tags in one
        /// `InvalidateTags`.
        pub max_batch: usize = 100, range(1, 10_000);
        /// Longest `ttl` and longest `stale_ttl`.
        pub max_ttl: Duration = days(30), range(secs(1), days(366));
        /// TTL of a `Set` that gives none; unset: `ttl` is required.
        pub default_ttl: Option<Duration> = None, range(ms(1), days(366));
        /// Lease lifetime when `GetOrLease` gives none; at most
        /// `cache.max_lease_ttl`.
        pub default_lease_ttl: Duration = secs(10), range(ms(1), secs(600));
        /// Longest lease a caller may ask for (leases must end well within
        /// the hour an invalidation is remembered).
        pub max_lease_ttl: Duration = secs(60), range(ms(1), secs(600));
    }
    check = Settings::rules;
}

impl Settings {
    fn rules(&self, path: &str, problems: &mut Problems) {
        if self.default_ttl.is_some_and(|ttl| ttl > self.max_ttl) {
            problems.push(join(path, "default_ttl"), "must be at most cache.max_ttl");
        }
        if self.default_lease_ttl > self.max_lease_ttl {
            problems.push(
                join(path, "default_lease_ttl"),
                "must be at most cache.max_lease_ttl",
            );
        }
    }

    pub fn key(&self, key: &str, field: &str) -> Result<(), FieldViolation> {
        validate::key(key, field, self.max_key_bytes)
    }

    pub fn value(&self, value: &[u8]) -> Result<(), FieldViolation> {
        if value.len() > self.max_value_bytes {
            return Err(FieldViolation::new(
                "value",
                format!(
                    "must be at most {} bytes (cache.max_value_bytes), got {}",
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

    /// Tags travel to Redis joined by newlines: no control characters.
    pub fn tag(&self, tag: &str, field: &str) -> Result<(), FieldViolation> {
        validate::text(tag, field, 1, MAX_TAG_BYTES)
    }

    pub fn tags(&self, tags: &[String], field: &str) -> Result<(), validate::Invalid> {
        if tags.len() > self.max_tags {
            return Err(FieldViolation::new(
                field,
                format!(
                    "at most {} tags (cache.max_tags), got {}",
                    self.max_tags,
                    tags.len()
                ),
            )
            .into());
        }
        validate::each(tags, field, |t| self.tag(t, "")).map(|_| ())
    }

    pub fn batch(&self, len: usize, field: &str) -> Result<(), FieldViolation> {
        validate::batch(len, field, self.max_batch, "cache.max_batch")
    }

    /// A write's TTL in microseconds: required unless a default applies.
    pub fn ttl(&self, ttl: Option<Duration>) -> Result<u64, FieldViolation> {
        if ttl.is_none() && self.default_ttl.is_none() {
            return Err(FieldViolation::new(
                "ttl",
                "is required (no cache.default_ttl is configured)",
            ));
        }
        DurationRange::up_to(self.max_ttl, "cache.max_ttl").micros(ttl, self.default_ttl, "ttl")
    }

    /// The stale period after the TTL, in microseconds; 0 when unset.
    pub fn stale_ttl(&self, stale: Option<Duration>) -> Result<u64, FieldViolation> {
        match stale {
            None => Ok(0),
            Some(d) if d.is_zero() => Ok(0),
            Some(d) => DurationRange::up_to(self.max_ttl, "cache.max_ttl").micros(
                Some(d),
                None,
                "stale_ttl",
            ),
        }
    }

    pub fn lease_ttl(&self, ttl: Option<Duration>) -> Result<u64, FieldViolation> {
        DurationRange::up_to(self.max_lease_ttl, "cache.max_lease_ttl").micros(
            ttl,
            Some(self.default_lease_ttl),
            "lease_ttl",
        )
    }
}
