//! Rate limits on Redis: one Lua script per algorithm (`lua/*.lua`), all
//! checks of a call pipelined in one round trip.

use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use deadpool_redis::redis;
use futures::StreamExt;
use tokio::sync::mpsc;

use super::coalesce::{Args, Coalescer};
use super::reservation::{Reservation, SettleResult, Settled, Settlement};
use super::store::{Store, generation_key, reservation_key, state_key};
use super::{Algorithm, Decision, Limited, RateCheck};
use crate::keys::Tenant;
use crate::store::StoreError;
use crate::store::redis::{NamedScript, Redis, ScriptCall};

struct Scripts {
    gcra: NamedScript,
    token_bucket: NamedScript,
    fixed_window: NamedScript,
    sliding_window: NamedScript,
    /// Every algorithm, all or nothing over several keys of one slot.
    batch: NamedScript,
    /// Every algorithm, independent checks that arrived together.
    many: NamedScript,
    /// One check that reserves; the settling of a reservation.
    reserve: NamedScript,
    settle: NamedScript,
    reset: NamedScript,
}

const GCRA: &str = include_str!("lua/gcra.lua");
const TOKEN_BUCKET: &str = include_str!("lua/token_bucket.lua");
const FIXED_WINDOW: &str = include_str!("lua/fixed_window.lua");
const SLIDING_WINDOW: &str = include_str!("lua/sliding_window.lua");
const DISPATCH: &str = include_str!("lua/dispatch.lua");

/// One check: KEYS[1] the state; ARGV as the algorithm's function takes
/// them, then the mode (`c` when absent, `f` for `Report`).
const CALL_GCRA: &str = "return gcra(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4] or 'c')\n";
const CALL_TOKEN_BUCKET: &str = "return token_bucket(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5] or 'c')\n";
const CALL_FIXED_WINDOW: &str = "return fixed_window(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4] or 'c')\n";
const CALL_SLIDING_WINDOW: &str = "return sliding_window(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4] or 'c')\n";

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    gcra: NamedScript::new("ratelimit.gcra", &[GCRA, CALL_GCRA]),
    token_bucket: NamedScript::new("ratelimit.token_bucket", &[TOKEN_BUCKET, CALL_TOKEN_BUCKET]),
    fixed_window: NamedScript::new("ratelimit.fixed_window", &[FIXED_WINDOW, CALL_FIXED_WINDOW]),
    sliding_window: NamedScript::new(
        "ratelimit.sliding_window",
        &[SLIDING_WINDOW, CALL_SLIDING_WINDOW],
    ),
    batch: NamedScript::new(
        "ratelimit.batch",
        &[
            GCRA,
            TOKEN_BUCKET,
            FIXED_WINDOW,
            SLIDING_WINDOW,
            DISPATCH,
            include_str!("lua/batch.lua"),
        ],
    ),
    many: NamedScript::new(
        "ratelimit.many",
        &[
            GCRA,
            TOKEN_BUCKET,
            FIXED_WINDOW,
            SLIDING_WINDOW,
            DISPATCH,
            include_str!("lua/many.lua"),
        ],
    ),
    reserve: NamedScript::new(
        "ratelimit.reserve",
        &[
            GCRA,
            TOKEN_BUCKET,
            FIXED_WINDOW,
            SLIDING_WINDOW,
            DISPATCH,
            include_str!("lua/reserve.lua"),
        ],
    ),
    settle: NamedScript::new(
        "ratelimit.settle",
        &[
            GCRA,
            TOKEN_BUCKET,
            FIXED_WINDOW,
            SLIDING_WINDOW,
            DISPATCH,
            include_str!("lua/settle.lua"),
        ],
    ),
    reset: NamedScript::new("ratelimit.reset", &[include_str!("lua/reset.lua")]),
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

/// ARGV of each script: see the header of its `lua/*.lua`. A forced call
/// consumes whether or not the cost fits.
fn call(key: &str, check: &RateCheck, forced: bool) -> ScriptCall<'static> {
    let mut call = alone(key, &batch_args(check));
    if forced {
        call.cmd.arg("f");
    }
    call
}

/// One check as its algorithm's own script takes it.
fn alone(key: &str, a: &Args) -> ScriptCall<'static> {
    let args: &[u64] = match a.algorithm {
        Algorithm::TokenBucket => &[a.a, a.b, a.c, a.cost],
        _ => &[a.a, a.b, a.cost],
    };
    script(a.algorithm).call(&[key], args)
}

/// The six ARGV of a check in the scripts that take several
/// (`lua/dispatch.lua`).
fn batch_args(check: &RateCheck) -> Args {
    let l = &check.target.limit;
    let (a, b, c) = match l.algorithm {
        Algorithm::TokenBucket => (l.limit, l.refill, l.period_us),
        _ => (l.limit, l.period_us, 0),
    };
    Args {
        algorithm: l.algorithm,
        a,
        b,
        c,
        cost: check.cost,
        shadow: check.shadow,
    }
}

fn decoded_slice(d: &[i64]) -> Decision {
    decoded((d[0], d[1], d[2], d[3]))
}

/// Reads `{allowed, remaining, reset_after_us, retry_after_us | -1}`.
fn decision(value: redis::Value) -> Result<Decision, StoreError> {
    let four: (i64, i64, i64, i64) = redis::FromRedisValue::from_redis_value(value)
        .map_err(|e| StoreError::internal(format!("rate-limit script reply: {e}")))?;
    Ok(decoded(four))
}

fn decoded((allowed, remaining, reset_after_us, retry_after_us): (i64, i64, i64, i64)) -> Decision {
    Decision {
        allowed: allowed == 1,
        remaining: remaining.max(0) as u64,
        reset_after_us: reset_after_us.max(0) as u64,
        retry_after_us: (retry_after_us >= 0).then_some(retry_after_us as u64),
    }
}

/// Where Resets are announced: `dl:<tenant>:rlr`, the key as payload.
fn reset_channel(tenant: &Tenant) -> String {
    format!("dl:{tenant}:rlr")
}

/// Forwards `(tenant, key)` of every reset notice until the connection
/// breaks or nobody listens.
async fn listen(
    client: &redis::Client,
    tx: &mpsc::Sender<(String, String)>,
) -> Result<(), redis::RedisError> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.psubscribe("dl:*:rlr").await?;
    let mut messages = pubsub.on_message();
    loop {
        let next = tokio::select! {
            next = messages.next() => next,
            () = tx.closed() => return Ok(()),
        };
        let Some(message) = next else { return Ok(()) };
        let tenant = message
            .get_channel_name()
            .strip_prefix("dl:")
            .and_then(|rest| rest.strip_suffix(":rlr"))
            .unwrap_or_default()
            .to_owned();
        let key: String = message.get_payload().unwrap_or_default();
        if tx.send((tenant, key)).await.is_err() {
            return Ok(());
        }
    }
}

pub struct RedisRateLimits {
    redis: Arc<Redis>,
    /// Single checks that arrive together, one script call (not on a
    /// cluster: see [`Coalescer`]).
    coalescer: Option<Coalescer>,
}

impl RedisRateLimits {
    pub fn new(redis: Arc<Redis>) -> Self {
        let coalescer = (!redis.is_cluster())
            .then(|| Coalescer::start(redis.clone(), alone, &SCRIPTS.many, decoded_slice));
        Self { redis, coalescer }
    }
}

#[async_trait]
impl Store for RedisRateLimits {
    async fn check(
        &self,
        tenant: &Tenant,
        checks: &[RateCheck],
    ) -> Result<Vec<Decision>, StoreError> {
        if let (Some(coalescer), [check]) = (&self.coalescer, checks) {
            let key = state_key(tenant, &check.target);
            return Ok(vec![coalescer.check(key, batch_args(check)).await?]);
        }
        let keys: Vec<String> = checks
            .iter()
            .map(|c| state_key(tenant, &c.target))
            .collect();
        let calls: Vec<_> = checks
            .iter()
            .zip(&keys)
            .map(|(c, k)| call(k, c, false))
            .collect();
        self.redis
            .eval_batch(&calls)
            .await?
            .into_iter()
            .map(decision)
            .collect()
    }

    async fn check_all(
        &self,
        tenant: &Tenant,
        checks: &[RateCheck],
    ) -> Result<Option<(bool, Vec<Decision>)>, StoreError> {
        let keys: Vec<String> = checks
            .iter()
            .map(|c| state_key(tenant, &c.target))
            .collect();
        if !self.redis.same_node(&keys) {
            return Ok(None);
        }
        let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let mut call = SCRIPTS.batch.call(&key_refs, &[]);
        for check in checks {
            batch_args(check).push(&mut call.cmd);
        }
        let values: Vec<i64> =
            redis::FromRedisValue::from_redis_value(self.redis.eval(call).await?)
                .map_err(|e| StoreError::internal(format!("rate-limit batch reply: {e}")))?;
        let Some((all, rest)) = values.split_first() else {
            return Err(StoreError::internal("rate-limit batch reply: empty"));
        };
        let decisions = rest.chunks_exact(4).map(decoded_slice).collect();
        Ok(Some((*all == 1, decisions)))
    }

    async fn report(&self, tenant: &Tenant, check: &RateCheck) -> Result<Decision, StoreError> {
        let key = state_key(tenant, &check.target);
        decision(self.redis.eval(call(&key, check, true)).await?)
    }

    async fn reserve(
        &self,
        tenant: &Tenant,
        check: &RateCheck,
        id: &str,
    ) -> Result<Decision, StoreError> {
        let keys = [
            state_key(tenant, &check.target),
            reservation_key(tenant, &check.target, id),
            generation_key(tenant, &check.target),
        ];
        let mut call = SCRIPTS.reserve.call(&[&keys[0], &keys[1], &keys[2]], &[]);
        batch_args(check).push(&mut call.cmd);
        decision(self.redis.eval(call).await?)
    }

    async fn settle(
        &self,
        tenant: &Tenant,
        target: &Limited,
        reservation: &Reservation,
        settlement: Settlement,
    ) -> Result<Settled, StoreError> {
        let keys = [
            state_key(tenant, target),
            reservation_key(tenant, target, &reservation.id),
            generation_key(tenant, target),
        ];
        let mut call = SCRIPTS.settle.call(&[&keys[0], &keys[1], &keys[2]], &[]);
        let check = RateCheck {
            target: target.clone(),
            cost: settlement.give_back,
            shadow: false,
        };
        batch_args(&check).push(&mut call.cmd);
        call.cmd.arg(settlement.extra);
        let bad = |e: String| StoreError::internal(format!("rate-limit settle reply: {e}"));
        let values: Vec<i64> =
            redis::FromRedisValue::from_redis_value(self.redis.eval(call).await?)
                .map_err(|e| bad(e.to_string()))?;
        let [code, d @ ..] = values.as_slice() else {
            return Err(bad("empty".into()));
        };
        let result = SettleResult::from_code(*code).ok_or_else(|| bad(format!("result {code}")))?;
        if d.len() != 4 {
            return Err(bad(format!("{} values", values.len())));
        }
        Ok(Settled {
            result,
            decision: decoded_slice(d),
        })
    }

    async fn reset(&self, tenant: &Tenant, target: &Limited) -> Result<(), StoreError> {
        let (state, generation) = (state_key(tenant, target), generation_key(tenant, target));
        let mut call = SCRIPTS.reset.call(&[&state, &generation], &[]);
        // Replicas caching denials of the key forget them (a cluster has
        // no pub/sub here: their entries last until their retry time).
        match self.redis.pubsub_client() {
            Some(_) => call.cmd.arg(reset_channel(tenant)).arg(&target.key),
            None => call.cmd.arg("").arg(""),
        };
        self.redis.eval(call).await?;
        Ok(())
    }

    fn resets(&self) -> Option<mpsc::Receiver<(String, String)>> {
        let client = self.redis.pubsub_client()?.clone();
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(async move {
            while !tx.is_closed() {
                if let Err(e) = listen(&client, &tx).await {
                    tracing::debug!(error = %e, "rate-limit reset notices: reconnecting");
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        });
        Some(rx)
    }
}
