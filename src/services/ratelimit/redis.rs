//! Rate limits on Redis: one Lua script per algorithm (`lua/*.lua`), all
//! checks of a call pipelined in one round trip.

use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use deadpool_redis::redis;

use super::store::{Store, state_key};
use super::{Algorithm, Decision, Limited, RateCheck};
use crate::keys::Tenant;
use crate::store::StoreError;
use crate::store::redis::{NamedScript, Redis, ScriptCall};

struct Scripts {
    gcra: NamedScript,
    token_bucket: NamedScript,
    fixed_window: NamedScript,
    sliding_window: NamedScript,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    gcra: NamedScript::new("ratelimit.gcra", &[include_str!("lua/gcra.lua")]),
    token_bucket: NamedScript::new(
        "ratelimit.token_bucket",
        &[include_str!("lua/token_bucket.lua")],
    ),
    fixed_window: NamedScript::new(
        "ratelimit.fixed_window",
        &[include_str!("lua/fixed_window.lua")],
    ),
    sliding_window: NamedScript::new(
        "ratelimit.sliding_window",
        &[include_str!("lua/sliding_window.lua")],
    ),
});

fn script(algorithm: Algorithm) -> &'static NamedScript {
    match algorithm {
        Algorithm::Gcra => &SCRIPTS.gcra,
        Algorithm::TokenBucket => &SCRIPTS.token_bucket,
        Algorithm::FixedWindow => &SCRIPTS.fixed_window,
        Algorithm::SlidingWindow => &SCRIPTS.sliding_window,
    }
}

/// The Lua source and SHA1 of an algorithm's script, for benchmarks that
/// run it straight on Redis.
pub fn script_source(algorithm: Algorithm) -> (&'static str, &'static str) {
    let s = script(algorithm);
    (s.source(), s.sha())
}

/// ARGV of each script: see the header of its `lua/*.lua`.
fn call<'a>(key: &str, check: &RateCheck) -> ScriptCall<'a> {
    let l = &check.target.limit;
    let args: &[u64] = match l.algorithm {
        Algorithm::TokenBucket => &[l.limit, l.refill, l.period_us, check.cost],
        _ => &[l.limit, l.period_us, check.cost],
    };
    script(l.algorithm).call(&[key], args)
}

/// Reads `{allowed, remaining, reset_after_us, retry_after_us | -1}`.
fn decision(value: redis::Value) -> Result<Decision, StoreError> {
    let (allowed, remaining, reset_after_us, retry_after_us): (i64, i64, i64, i64) =
        redis::FromRedisValue::from_redis_value(value)
            .map_err(|e| StoreError::internal(format!("rate-limit script reply: {e}")))?;
    Ok(Decision {
        allowed: allowed == 1,
        remaining: remaining.max(0) as u64,
        reset_after_us: reset_after_us.max(0) as u64,
        retry_after_us: (retry_after_us >= 0).then_some(retry_after_us as u64),
    })
}

pub struct RedisRateLimits {
    redis: Arc<Redis>,
}

impl RedisRateLimits {
    pub fn new(redis: Arc<Redis>) -> Self {
        Self { redis }
    }
}

#[async_trait]
impl Store for RedisRateLimits {
    async fn check(
        &self,
        tenant: &Tenant,
        checks: &[RateCheck],
    ) -> Result<Vec<Decision>, StoreError> {
        let keys: Vec<String> = checks
            .iter()
            .map(|c| state_key(tenant, &c.target))
            .collect();
        let calls: Vec<_> = checks.iter().zip(&keys).map(|(c, k)| call(k, c)).collect();
        self.redis
            .eval_batch(&calls)
            .await?
            .into_iter()
            .map(decision)
            .collect()
    }

    async fn reset(&self, tenant: &Tenant, target: &Limited) -> Result<(), StoreError> {
        let mut del = redis::cmd("DEL");
        del.arg(state_key(tenant, target));
        for reply in self.redis.exec("DEL", vec![del]).await? {
            reply.map_err(|e| StoreError::from_redis(&e))?;
        }
        Ok(())
    }
}
