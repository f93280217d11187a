//! `ratelimit.*`: request bounds and the named policies callers refer to.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use super::{FailMode, Limit, LimitSpec, MAX_LIMIT, MAX_PERIOD, MIN_PERIOD, is_valid_policy_name};
use crate::settings::{Problems, join};

crate::setting_enum! {
    /// A rate-limit algorithm, as configuration names it.
    pub enum AlgorithmName {
        Gcra = "gcra",
        TokenBucket = "token_bucket",
        FixedWindow = "fixed_window",
        SlidingWindow = "sliding_window",
    }
    default = Gcra;
}

crate::setting_enum! {
    /// What a limit answers while the store is unavailable.
    pub enum FailModeName {
        /// `UNAVAILABLE`.
        Closed = "closed",
        /// Allowed, with reason `FAIL_OPEN`.
        Open = "open",
    }
    default = Closed;
}

crate::section! {
    /// A policy: a limit configured by name.
    ///
    /// GCRA (the default) takes `limit` and `period`; the window algorithms
    /// `limit` and `window`; the token bucket `capacity`, `refill_amount`
    /// and `refill_interval`.
    pub struct PolicySpec {
        /// `gcra` (when unset), `token_bucket`, `fixed_window` or
        /// `sliding_window`.
        pub algorithm: Option<AlgorithmName> = None;
        /// Units per `period` (gcra) or per `window`.
        pub limit: Option<u64> = None, range(1, MAX_LIMIT);
        /// GCRA's period.
        pub period: Option<Duration> = None, range(MIN_PERIOD, MAX_PERIOD);
        /// The window of `fixed_window` and `sliding_window`.
        pub window: Option<Duration> = None, range(MIN_PERIOD, MAX_PERIOD);
        /// The token bucket's size.
        pub capacity: Option<u64> = None, range(1, MAX_LIMIT);
        /// Tokens added every `refill_interval`.
        pub refill_amount: Option<u64> = None, range(1, MAX_LIMIT);
        /// How often the token bucket refills.
        pub refill_interval: Option<Duration> = None, range(MIN_PERIOD, MAX_PERIOD);
        /// `closed` (when unset: UNAVAILABLE while the store is down) or
        /// `open` (allowed, reason FAIL_OPEN).
        pub fail_mode: Option<FailModeName> = None;
        /// Record every decision in the analytics metric `ratelimit.checks`
        /// (by policy and result, denied keys in its `identifier` top list),
        /// counted in memory and flushed every `analytics.flush_interval`.
        pub analytics: bool = false;
        /// Decide and count, but answer allowed (reason
        /// `REASON_SHADOW_OVER_LIMIT`): to try a limit out in production.
        pub shadow_mode: bool = false;
    }
}

impl PolicySpec {
    /// The validated limit; each violation names a key of the policy.
    pub fn to_limit(&self) -> Result<Limit, Vec<crate::validate::FieldViolation>> {
        use super::Algorithm as A;
        let fail_mode = match self.fail_mode.unwrap_or_default() {
            FailModeName::Closed => FailMode::Closed,
            FailModeName::Open => FailMode::Open,
        };
        let named = self.algorithm.is_some();
        let algorithm = self.algorithm.unwrap_or_default();
        // Name the keys that do not belong to the chosen algorithm: the
        // usual mistake is `window` with the default algorithm (gcra).
        let stray: &[(&str, bool)] = match algorithm {
            AlgorithmName::Gcra => &[
                ("window", self.window.is_some()),
                ("capacity", self.capacity.is_some()),
                ("refill_amount", self.refill_amount.is_some()),
                ("refill_interval", self.refill_interval.is_some()),
            ],
            AlgorithmName::FixedWindow | AlgorithmName::SlidingWindow => &[
                ("period", self.period.is_some()),
                ("capacity", self.capacity.is_some()),
                ("refill_amount", self.refill_amount.is_some()),
                ("refill_interval", self.refill_interval.is_some()),
            ],
            AlgorithmName::TokenBucket => &[
                ("limit", self.limit.is_some()),
                ("period", self.period.is_some()),
                ("window", self.window.is_some()),
            ],
        };
        let hint = if named {
            format!("algorithm `{algorithm}`")
        } else {
            "the default algorithm `gcra` (set `algorithm` to choose another)".to_owned()
        };
        let mut bad: Vec<_> = stray
            .iter()
            .filter(|(_, set)| *set)
            .map(|(key, _)| {
                crate::validate::FieldViolation::new(*key, format!("is not a setting of {hint}"))
            })
            .collect();
        let spec = match algorithm {
            AlgorithmName::Gcra => LimitSpec {
                algorithm: A::Gcra,
                limit: (self.limit, "limit"),
                period: (self.period, "period"),
                refill: None,
                fail_mode,
            },
            AlgorithmName::FixedWindow => LimitSpec {
                algorithm: A::FixedWindow,
                limit: (self.limit, "limit"),
                period: (self.window, "window"),
                refill: None,
                fail_mode,
            },
            AlgorithmName::SlidingWindow => LimitSpec {
                algorithm: A::SlidingWindow,
                limit: (self.limit, "limit"),
                period: (self.window, "window"),
                refill: None,
                fail_mode,
            },
            AlgorithmName::TokenBucket => LimitSpec {
                algorithm: A::TokenBucket,
                limit: (self.capacity, "capacity"),
                period: (self.refill_interval, "refill_interval"),
                refill: Some((self.refill_amount, "refill_amount")),
                fail_mode,
            },
        };
        match Limit::parse(spec) {
            Ok(limit) if bad.is_empty() => Ok(limit),
            Ok(_) => Err(bad),
            Err(more) => {
                for v in more {
                    let description = if v.description == "is required" {
                        format!("is required by {hint}")
                    } else {
                        v.description
                    };
                    bad.push(crate::validate::FieldViolation::new(v.field, description));
                }
                Err(bad)
            }
        }
    }
}

crate::section! {
    /// Rate limiting.
    pub struct Settings {
        /// Most checks one `CheckBatch` may carry.
        pub max_batch: usize = 100, range(1, 10_000);
        /// Named limits callers refer to by `policy`, e.g.
        /// `ratelimit.policies.auth = {algorithm = "sliding_window", limit = 5, window = "1m"}`.
        pub policies: BTreeMap<String, PolicySpec> = BTreeMap::new();
        /// Answer checks of a key and limit that Redis just rejected
        /// "rejected" in process, without Redis, until their `retry_after`
        /// (flood protection; a Reset clears it on every replica).
        pub denial_cache: bool = false;
        /// Most denials the cache holds per replica.
        pub denial_cache_max_keys: usize = 100_000, range(1, 10_000_000);
        /// Envoy's rate-limit protocol, served beside this one.
        pub envoy: super::envoy::EnvoySettings = super::envoy::EnvoySettings::default();
    }
    check = Settings::rules;
}

impl Settings {
    fn rules(&self, path: &str, problems: &mut Problems) {
        for (name, spec) in &self.policies {
            let at = join(&join(path, "policies"), name);
            if !is_valid_policy_name(name) {
                problems.push(&at, "policy names are 1 to 64 characters of [A-Za-z0-9_.-]");
            }
            if let Err(violations) = spec.to_limit() {
                for v in violations {
                    problems.push(join(&at, &v.field), v.description);
                }
            }
        }
    }

    /// The policies whose decisions analytics record.
    pub fn recorded(&self) -> std::collections::BTreeSet<Arc<str>> {
        self.policies
            .iter()
            .filter(|(_, spec)| spec.analytics)
            .map(|(name, _)| Arc::from(name.as_str()))
            .collect()
    }

    /// The policies in shadow mode.
    pub fn shadowed(&self) -> std::collections::BTreeSet<Arc<str>> {
        self.policies
            .iter()
            .filter(|(_, spec)| spec.shadow_mode)
            .map(|(name, _)| Arc::from(name.as_str()))
            .collect()
    }

    /// The configured policies, by name (settings were validated at load).
    pub fn policies(&self) -> Result<BTreeMap<Arc<str>, Limit>, String> {
        self.policies
            .iter()
            .map(|(name, spec)| {
                spec.to_limit()
                    .map(|limit| (Arc::from(name.as_str()), limit))
                    .map_err(|vs| {
                        let v = &vs[0];
                        format!("ratelimit.policies.{name}.{}: {}", v.field, v.description)
                    })
            })
            .collect()
    }
}
