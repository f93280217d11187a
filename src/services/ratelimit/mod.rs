//! Rate limiting: what a limit is, how one is validated, and the answer a
//! check produces. `grpc.rs` converts the wire to these types; `store.rs`
//! is what the two stores implement.
//!
//! The algorithms live twice, on purpose: in Lua (`lua/*.lua`, atomic
//! inside Redis, on Redis time) and in Rust ([`algorithm`], used by the
//! memory store). Both use only integer arithmetic exact below 2^53, so
//! they agree to the microsecond; the conformance suite proves it.

pub mod algorithm;
mod coalesce;
mod denials;
pub mod envoy;
mod grpc;
mod memory;
mod redis;
pub mod reservation;
pub mod settings;
pub mod store;

use std::{sync::Arc, time::Duration};

pub use redis::script_source;
pub use settings::{PolicySpec, Settings};

use crate::keys::Space;
use crate::registry::{Module, RegisterError, Registrar};
use crate::validate::FieldViolation;

/// Rate-limit state, by caller key.
pub const SPACE: Space = Space::expiring("rl");

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

pub struct Service;

impl Module for Service {
    const NAME: &'static str = "ratelimit";
    type Settings = Settings;
    const SPACES: &'static [Space] = &[SPACE];

    fn register(settings: &Settings, registrar: &mut Registrar<'_>) -> Result<(), RegisterError> {
        let policies = settings.policies().map_err(|problems| RegisterError {
            service: Self::NAME,
            message: problems,
        })?;
        let store = store::build(registrar.backend());
        // Envoy's protocol, from the same store and algorithms.
        let envoy_config =
            envoy::Config::load(&settings.envoy).map_err(|message| RegisterError {
                service: Self::NAME,
                message: format!("ratelimit.envoy.config_files: {message}"),
            })?;
        envoy_config.watch(
            settings.envoy.reload_interval,
            registrar.shared().shutdown.clone(),
        );
        registrar.add(envoy::Handler::new(
            store.clone(),
            envoy_config,
            settings.envoy.clone(),
        ));
        let recorded = settings.recorded();
        let recorder = (!recorded.is_empty()).then(|| {
            let recorder = crate::services::analytics::recorder::Recorder::new();
            registrar.hand_off(recorder.clone());
            (recorder, recorded)
        });
        let denials = settings.denial_cache.then(|| {
            let denials = Arc::new(denials::Denials::new(settings.denial_cache_max_keys));
            forget_resets(&store, &denials);
            denials
        });
        registrar.add(grpc::Handler::new(
            store,
            settings.clone(),
            policies,
            recorder,
            denials,
        ));
        Ok(())
    }
}

/// Clears cached denials of keys reset on any replica.
fn forget_resets(store: &Arc<dyn store::Store>, denials: &Arc<denials::Denials>) {
    let Some(mut resets) = store.resets() else {
        return;
    };
    let denials = Arc::downgrade(denials);
    tokio::spawn(async move {
        while let Some((tenant, key)) = resets.recv().await {
            let Some(denials) = denials.upgrade() else {
                return;
            };
            if let Ok(tenant) = crate::keys::Tenant::parse(&tenant) {
                denials.forget(&tenant, &key);
            }
        }
    });
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limit {
    pub algorithm: Algorithm,
    pub limit: u64,
    pub period_us: u64,
    pub refill: u64,
    pub fail_mode: FailMode,
}

/// A limit as a request or a configured policy spells it, with the name of
/// each part for error messages (`gcra.period`, `window`).
pub struct LimitSpec<'a> {
    pub algorithm: Algorithm,
    pub limit: (Option<u64>, &'a str),
    pub period: (Option<Duration>, &'a str),
    /// Token bucket only: tokens added per period.
    pub refill: Option<(Option<u64>, &'a str)>,
    pub fail_mode: FailMode,
}

impl Limit {
    /// Any cost above the limit behaves the same (it never fits), so the
    /// stores only ever see `limit + 1` at most, which keeps Lua arithmetic
    /// exact however large a cost a caller sends.
    pub fn clamp_cost(&self, cost: u64) -> u64 {
        cost.min(self.limit + 1)
    }

    /// Validates a spec, reporting every bad part.
    pub fn parse(spec: LimitSpec<'_>) -> Result<Self, Vec<FieldViolation>> {
        let mut bad = Vec::new();
        let count = match spec.limit {
            (None, field) => {
                bad.push(FieldViolation::new(field, "is required"));
                None
            }
            (Some(v), field) if v == 0 || v > MAX_LIMIT => {
                bad.push(FieldViolation::new(
                    field,
                    format!("must be between 1 and {MAX_LIMIT}, got {v}"),
                ));
                None
            }
            (Some(v), _) => Some(v),
        };
        let period_us = match spec.period {
            (None, field) => {
                bad.push(FieldViolation::new(field, "is required"));
                None
            }
            (Some(p), field) if p < MIN_PERIOD || p > MAX_PERIOD => {
                bad.push(FieldViolation::new(
                    field,
                    format!(
                        "must be between {} and {}, got {}",
                        crate::validate::duration(MIN_PERIOD),
                        crate::validate::duration(MAX_PERIOD),
                        crate::validate::duration(p)
                    ),
                ));
                None
            }
            (Some(p), _) => Some(p.as_micros() as u64),
        };
        let refill = match (spec.refill, count) {
            (None, _) => count,
            (Some((None, field)), _) => {
                bad.push(FieldViolation::new(field, "is required"));
                None
            }
            (Some((Some(amount), field)), Some(count)) if amount == 0 || amount > count => {
                bad.push(FieldViolation::new(
                    field,
                    format!("must be between 1 and the capacity ({count}), got {amount}"),
                ));
                None
            }
            (Some((Some(amount), _)), _) => Some(amount),
        };
        let (Some(count), Some(period_us), Some(refill)) = (count, period_us, refill) else {
            return Err(bad);
        };
        // A bucket must refill completely within MAX_PERIOD, which bounds
        // the key's TTL.
        if count.div_ceil(refill).saturating_mul(period_us) > MAX_PERIOD.as_micros() as u64 {
            return Err(vec![FieldViolation::new(
                spec.period.1,
                format!(
                    "refilling the whole bucket must take at most {}",
                    crate::validate::duration(MAX_PERIOD)
                ),
            )]);
        }
        Ok(Limit {
            algorithm: spec.algorithm,
            limit: count,
            period_us,
            refill,
            fail_mode: spec.fail_mode,
        })
    }
}

/// Whose budget a check spends: a configured policy's, or an inline
/// limit's. State is kept apart by scope and algorithm, so one caller key
/// can carry several independent limits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    Inline,
    Policy(Arc<str>),
}

impl Scope {
    /// The metrics label: `inline` or the policy's name (bounded variety:
    /// only configured names get here).
    pub fn label(&self) -> &str {
        match self {
            Scope::Inline => "inline",
            Scope::Policy(name) => name,
        }
    }
}

/// A limited caller key: the key, its scope and its limit.
#[derive(Debug, Clone)]
pub struct Limited {
    pub key: String,
    pub scope: Scope,
    pub limit: Limit,
}

/// One check as the stores see it.
#[derive(Debug, Clone)]
pub struct RateCheck {
    pub target: Limited,
    /// Already clamped to `limit + 1` (a report's: to 100 × the limit).
    pub cost: u64,
    /// A shadow-mode policy: its rejection holds back no other check of an
    /// all-or-nothing batch (the handler answers it as allowed).
    pub shadow: bool,
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

pub fn is_valid_policy_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}
