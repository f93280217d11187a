//! Rate limiting: what a limit is, how a request's limit is validated, and
//! the answer a check produces.
//!
//! The algorithms themselves live twice, on purpose: in Lua
//! (`store/redis/lua/ratelimit_*.lua`, atomic inside Redis, on Redis time) and
//! in Rust ([`algorithm`], used by the memory store). Both use only integer
//! arithmetic exact below 2^53, so they agree to the microsecond; the shared
//! conformance suite in `tests/ratelimit.rs` is what proves it.

pub mod algorithm;

use std::time::Duration;

use serde::Deserialize;

use crate::error::{FieldViolation, proto_duration};
use crate::proto;

/// Largest `limit` / `capacity`. GCRA keeps a fraction in units of 1/limit
/// microseconds; limit² must stay below 2^53 for Lua's doubles to be exact.
pub const MAX_LIMIT: u64 = 50_000_000;
/// Shortest period, window or refill interval.
pub const MIN_PERIOD: Duration = Duration::from_millis(1);
/// Longest period, window or refill interval, and so the longest TTL a
/// rate-limit key can carry.
pub const MAX_PERIOD: Duration = Duration::from_secs(30 * 24 * 3600);
/// Longest caller key, in bytes.
pub const MAX_KEY_BYTES: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Gcra,
    TokenBucket,
    FixedWindow,
    SlidingWindow,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Gcra => "gcra",
            Algorithm::TokenBucket => "token_bucket",
            Algorithm::FixedWindow => "fixed_window",
            Algorithm::SlidingWindow => "sliding_window",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailMode {
    /// Store down: the call fails with `UNAVAILABLE`.
    #[default]
    Closed,
    /// Store down: the call is allowed with reason `FAIL_OPEN`.
    Open,
}

/// A validated limit. For the window algorithms and GCRA, `limit` units per
/// `period_us`; for the token bucket, a bucket of `limit` tokens refilled by
/// `refill` tokens every `period_us`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub algorithm: Algorithm,
    pub limit: u64,
    pub period_us: u64,
    pub refill: u64,
    pub fail_mode: FailMode,
}

impl Limit {
    /// Any cost above the limit behaves the same (it never fits), so the
    /// stores only ever see `limit + 1` at most, which keeps Lua arithmetic
    /// exact however large a cost a caller sends.
    pub fn clamp_cost(&self, cost: u64) -> u64 {
        cost.min(self.limit + 1)
    }
}

/// The answer of one check, before it is mapped to the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub remaining: u64,
    pub reset_after_us: u64,
    /// `None` when allowed, or when the cost can never fit.
    pub retry_after_us: Option<u64>,
}

/// One check as the stores see it: a store key, a limit and a clamped cost.
#[derive(Debug, Clone)]
pub struct RateCheck {
    pub key: String,
    pub limit: Limit,
    pub cost: u64,
}

pub fn is_valid_policy_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Checks a caller's key: non-empty, at most [`MAX_KEY_BYTES`].
pub fn validate_key(key: &str, field: &str) -> Result<(), FieldViolation> {
    if key.is_empty() {
        return Err(FieldViolation::new(field, "must not be empty"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(FieldViolation::new(
            field,
            format!("must be at most {MAX_KEY_BYTES} bytes, got {}", key.len()),
        ));
    }
    Ok(())
}

fn check_count(value: u64, field: &str) -> Result<u64, FieldViolation> {
    if value == 0 || value > MAX_LIMIT {
        return Err(FieldViolation::new(
            field,
            format!("must be between 1 and {MAX_LIMIT}, got {value}"),
        ));
    }
    Ok(value)
}

fn check_period(value: Option<Duration>, field: &str) -> Result<u64, FieldViolation> {
    let Some(value) = value else {
        return Err(FieldViolation::new(field, "is required"));
    };
    if value < MIN_PERIOD || value > MAX_PERIOD {
        return Err(FieldViolation::new(
            field,
            format!(
                "must be between {} and {}, got {}",
                humantime::format_duration(MIN_PERIOD),
                humantime::format_duration(MAX_PERIOD),
                humantime::format_duration(value)
            ),
        ));
    }
    Ok(value.as_micros() as u64)
}

impl Limit {
    fn build(
        algorithm: Algorithm,
        limit: (u64, &str),
        period: (Option<Duration>, &str),
        refill: Option<(u64, &str)>,
        fail_mode: FailMode,
    ) -> Result<Self, FieldViolation> {
        let count = check_count(limit.0, limit.1)?;
        let period_us = check_period(period.0, period.1)?;
        let refill = match refill {
            None => count,
            Some((amount, field)) => {
                if amount == 0 || amount > count {
                    return Err(FieldViolation::new(
                        field,
                        format!("must be between 1 and the capacity ({count}), got {amount}"),
                    ));
                }
                // A bucket must refill completely within MAX_PERIOD, which
                // bounds the key's TTL.
                let full_refill_us = count.div_ceil(amount).saturating_mul(period_us);
                if full_refill_us > MAX_PERIOD.as_micros() as u64 {
                    return Err(FieldViolation::new(
                        period.1,
                        format!(
                            "refilling the whole bucket must take at most {}",
                            humantime::format_duration(MAX_PERIOD)
                        ),
                    ));
                }
                amount
            }
        };
        Ok(Limit {
            algorithm,
            limit: count,
            period_us,
            refill,
            fail_mode,
        })
    }

    /// Validates an inline limit. Field names are relative to the `Limit`
    /// message (`gcra.period`), for the caller to prefix.
    pub fn from_proto(msg: &proto::Limit) -> Result<Self, FieldViolation> {
        use proto::limit::Algorithm as A;
        let fail_mode = match proto::FailMode::try_from(msg.fail_mode) {
            Ok(proto::FailMode::Unspecified | proto::FailMode::Closed) => FailMode::Closed,
            Ok(proto::FailMode::Open) => FailMode::Open,
            Err(_) => {
                return Err(FieldViolation::new(
                    "fail_mode",
                    format!("unknown value {}", msg.fail_mode),
                ));
            }
        };
        match &msg.algorithm {
            None => Err(FieldViolation::new(
                "algorithm",
                "set one of gcra, token_bucket, fixed_window, sliding_window",
            )),
            Some(A::Gcra(g)) => Self::build(
                Algorithm::Gcra,
                (g.limit, "gcra.limit"),
                (
                    proto_duration(g.period.as_ref(), "gcra.period")?,
                    "gcra.period",
                ),
                None,
                fail_mode,
            ),
            Some(A::TokenBucket(t)) => Self::build(
                Algorithm::TokenBucket,
                (t.capacity, "token_bucket.capacity"),
                (
                    proto_duration(t.refill_interval.as_ref(), "token_bucket.refill_interval")?,
                    "token_bucket.refill_interval",
                ),
                Some((t.refill_amount, "token_bucket.refill_amount")),
                fail_mode,
            ),
            Some(A::FixedWindow(w)) => Self::build(
                Algorithm::FixedWindow,
                (w.limit, "fixed_window.limit"),
                (
                    proto_duration(w.window.as_ref(), "fixed_window.window")?,
                    "fixed_window.window",
                ),
                None,
                fail_mode,
            ),
            Some(A::SlidingWindow(w)) => Self::build(
                Algorithm::SlidingWindow,
                (w.limit, "sliding_window.limit"),
                (
                    proto_duration(w.window.as_ref(), "sliding_window.window")?,
                    "sliding_window.window",
                ),
                None,
                fail_mode,
            ),
        }
    }
}

/// A policy as written in configuration:
///
/// ```toml
/// [ratelimit.policies.auth]
/// algorithm = "sliding_window"   # gcra (default) | token_bucket | fixed_window | sliding_window
/// limit = 5
/// window = "1m"                  # `period` for gcra
/// fail_mode = "closed"           # or "open"
/// ```
///
/// A token bucket takes `capacity`, `refill_amount` and `refill_interval`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PolicyLimitSpec {
    pub algorithm: Option<String>,
    pub limit: Option<u64>,
    #[serde(default, with = "humantime_serde")]
    pub period: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub window: Option<Duration>,
    pub capacity: Option<u64>,
    pub refill_amount: Option<u64>,
    #[serde(default, with = "humantime_serde")]
    pub refill_interval: Option<Duration>,
    pub fail_mode: Option<String>,
}

impl PolicyLimitSpec {
    pub fn to_limit(&self) -> Result<Limit, FieldViolation> {
        let fail_mode = match self.fail_mode.as_deref() {
            None | Some("closed") => FailMode::Closed,
            Some("open") => FailMode::Open,
            Some(other) => {
                return Err(FieldViolation::new(
                    "fail_mode",
                    format!("must be `closed` or `open`, got `{other}`"),
                ));
            }
        };
        let required = |value: Option<u64>, field: &str| {
            value.ok_or_else(|| FieldViolation::new(field, "is required"))
        };
        match self.algorithm.as_deref().unwrap_or("gcra") {
            "gcra" => Limit::build(
                Algorithm::Gcra,
                (required(self.limit, "limit")?, "limit"),
                (self.period, "period"),
                None,
                fail_mode,
            ),
            "token_bucket" => Limit::build(
                Algorithm::TokenBucket,
                (required(self.capacity, "capacity")?, "capacity"),
                (self.refill_interval, "refill_interval"),
                Some((
                    required(self.refill_amount, "refill_amount")?,
                    "refill_amount",
                )),
                fail_mode,
            ),
            "fixed_window" => Limit::build(
                Algorithm::FixedWindow,
                (required(self.limit, "limit")?, "limit"),
                (self.window, "window"),
                None,
                fail_mode,
            ),
            "sliding_window" => Limit::build(
                Algorithm::SlidingWindow,
                (required(self.limit, "limit")?, "limit"),
                (self.window, "window"),
                None,
                fail_mode,
            ),
            other => Err(FieldViolation::new(
                "algorithm",
                format!(
                    "must be gcra, token_bucket, fixed_window or sliding_window, got `{other}`"
                ),
            )),
        }
    }
}
