use std::sync::LazyLock;

use async_trait::async_trait;
use deadpool_redis::redis;

use super::{NamedScript, RedisStore, lua_script};
use crate::ratelimit::{Algorithm, Decision, RateCheck};
use crate::store::{RateLimitStore, StoreError};

struct Scripts {
    gcra: NamedScript,
    token_bucket: NamedScript,
    fixed_window: NamedScript,
    sliding_window: NamedScript,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    gcra: lua_script!("ratelimit_gcra"),
    token_bucket: lua_script!("ratelimit_token_bucket"),
    fixed_window: lua_script!("ratelimit_fixed_window"),
    sliding_window: lua_script!("ratelimit_sliding_window"),
});

/// The Lua source and SHA1 of an algorithm's script, for benchmarks that run
/// it straight on Redis.
pub fn script_source(algorithm: Algorithm) -> (&'static str, &'static str) {
    let script = match algorithm {
        Algorithm::Gcra => &SCRIPTS.gcra,
        Algorithm::TokenBucket => &SCRIPTS.token_bucket,
        Algorithm::FixedWindow => &SCRIPTS.fixed_window,
        Algorithm::SlidingWindow => &SCRIPTS.sliding_window,
    };
    (script.source, script.script.get_hash())
}

fn call(check: &RateCheck) -> super::ScriptCall<'static> {
    let l = &check.limit;
    let key = [check.key.as_str()];
    match l.algorithm {
        Algorithm::Gcra => SCRIPTS.gcra.call(&key, &[l.limit, l.period_us, check.cost]),
        Algorithm::TokenBucket => SCRIPTS
            .token_bucket
            .call(&key, &[l.limit, l.refill, l.period_us, check.cost]),
        Algorithm::FixedWindow => SCRIPTS
            .fixed_window
            .call(&key, &[l.limit, l.period_us, check.cost]),
        Algorithm::SlidingWindow => SCRIPTS
            .sliding_window
            .call(&key, &[l.limit, l.period_us, check.cost]),
    }
}

/// Reads `{allowed, remaining, reset_after_us, retry_after_us | -1}`.
fn decision(value: redis::Value) -> Result<Decision, StoreError> {
    let (allowed, remaining, reset_after_us, retry_after_us): (i64, i64, i64, i64) =
        redis::FromRedisValue::from_redis_value(value)
            .map_err(|e| StoreError::Internal(format!("rate-limit script reply: {e}")))?;
    Ok(Decision {
        allowed: allowed == 1,
        remaining: remaining.max(0) as u64,
        reset_after_us: reset_after_us.max(0) as u64,
        retry_after_us: (retry_after_us >= 0).then_some(retry_after_us as u64),
    })
}

#[async_trait]
impl RateLimitStore for RedisStore {
    async fn check(&self, checks: &[RateCheck]) -> Result<Vec<Decision>, StoreError> {
        let calls: Vec<_> = checks.iter().map(call).collect();
        self.eval_batch(&calls)
            .await?
            .into_iter()
            .map(decision)
            .collect()
    }

    async fn reset(&self, key: &str) -> Result<(), StoreError> {
        let mut del = redis::cmd("DEL");
        del.arg(key);
        for reply in self.exec("DEL", vec![del]).await? {
            reply.map_err(|e| StoreError::from_redis(&e))?;
        }
        Ok(())
    }
}
