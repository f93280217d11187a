//! The health probe of Redis: can it take a write now, and what is it?
//!
//! Each probe writes a short-lived key (`SET … PX`), which fails exactly
//! when calls' writes would (out of memory with `noeviction`, a read-only
//! replica after a failover, a wrong password, an unknown database), and
//! reads `INFO` for the version (Redis 6 takes no script shebang) and the
//! eviction policy (which can silently drop sessions and rate-limit state,
//! or, with `allkeys-*`, any key). What it learns is logged once per change.

use std::sync::{Mutex, atomic::Ordering};

use deadpool_redis::redis::{self, Value};

use super::Redis;
use crate::store::StoreError;

/// What the probe saw last, so each change is logged once.
#[derive(Default)]
pub(super) struct Observed(Mutex<Option<(String, String)>>);

/// The fields of `INFO` the probe reads.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Info {
    pub version: String,
    pub role: String,
    pub maxmemory_policy: String,
}

impl Info {
    pub fn parse(text: &str) -> Self {
        let mut info = Info::default();
        for line in text.lines() {
            let Some((key, value)) = line.trim().split_once(':') else {
                continue;
            };
            let value = value.to_owned();
            match key {
                "redis_version" => info.version = value,
                "role" => info.role = value,
                "maxmemory_policy" => info.maxmemory_policy = value,
                _ => {}
            }
        }
        info
    }

    /// Redis 7 and later read the flags a script's shebang declares.
    pub fn takes_script_flags(&self) -> bool {
        self.version
            .split('.')
            .next()
            .and_then(|major| major.parse::<u32>().ok())
            .is_none_or(|major| major >= 7)
    }

    /// A warning about the eviction policy, if it can drop our keys.
    pub fn eviction_warning(&self) -> Option<String> {
        let policy = self.maxmemory_policy.as_str();
        if policy.is_empty() || policy == "noeviction" {
            return None;
        }
        let what = if policy.starts_with("allkeys-") {
            "any key — sessions, rate-limit state, and durable data such as flags and jobs"
        } else {
            "keys with a TTL — sessions, rate-limit state (which then admits more than the limit) and cache entries"
        };
        Some(format!(
            "Redis maxmemory-policy is `{policy}`: when memory runs out Redis evicts {what}. \
             Set `maxmemory-policy noeviction` so a full Redis refuses writes instead \
             (calls then answer RESOURCE_EXHAUSTED) and nothing is lost silently"
        ))
    }
}

impl Redis {
    /// Whether Redis can serve reads and writes now.
    pub async fn probe(&self) -> Result<(), StoreError> {
        let mut set = redis::cmd("SET");
        set.arg(&self.probe_key).arg("1").arg("PX").arg(5000);
        let mut replies = self
            .exec_untraced(vec![set, redis::cmd("INFO")])
            .await?
            .into_iter();
        let written = match replies.next() {
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(StoreError::from_redis(&e)),
            None => Err(StoreError::internal("the probe got no reply")),
        };
        if let Some(Ok(info)) = replies.next() {
            let text = match info {
                Value::BulkString(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                Value::VerbatimString { text, .. } => text,
                other => format!("{other:?}"),
            };
            self.learn(Info::parse(&text));
        }
        written
    }

    fn learn(&self, info: Info) {
        self.script_flags
            .store(info.takes_script_flags(), Ordering::Relaxed);
        let seen = (info.version.clone(), info.maxmemory_policy.clone());
        let mut observed = crate::store::memory::lock(&self.observed.0);
        if observed.as_ref() == Some(&seen) {
            return;
        }
        tracing::info!(
            version = %info.version,
            role = %info.role,
            maxmemory_policy = %info.maxmemory_policy,
            "redis server"
        );
        if !info.takes_script_flags() {
            tracing::warn!(
                version = %info.version,
                "Redis before 7 ignores script flags: a script may run out of memory \
                 half-way; upgrade to Redis 7"
            );
        }
        if let Some(warning) = info.eviction_warning() {
            tracing::warn!("{warning}");
        }
        *observed = Some(seen);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_fields_it_needs() {
        let info = Info::parse(
            "# Server\r\nredis_version:7.0.15\r\n# Replication\r\nrole:slave\r\n\
             # Memory\r\nmaxmemory_policy:allkeys-lru\r\n",
        );
        assert_eq!(info.version, "7.0.15");
        assert_eq!(info.role, "slave");
        assert!(info.takes_script_flags());
        assert!(info.eviction_warning().unwrap().contains("durable data"));
        let old = Info::parse("redis_version:6.2.14\r\nmaxmemory_policy:noeviction\r\n");
        assert!(!old.takes_script_flags());
        assert_eq!(old.eviction_warning(), None);
        let volatile = Info::parse("maxmemory_policy:volatile-ttl\r\n");
        assert!(volatile.eviction_warning().unwrap().contains("rate-limit"));
    }
}
