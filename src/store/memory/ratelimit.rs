use async_trait::async_trait;

use super::{Entry, MemoryStore};
use crate::ratelimit::{Decision, RateCheck, algorithm};
use crate::store::{RateLimitStore, StoreError};

#[async_trait]
impl RateLimitStore for MemoryStore {
    async fn check(&self, checks: &[RateCheck]) -> Result<Vec<Decision>, StoreError> {
        Ok(checks.iter().map(|check| self.check_one(check)).collect())
    }

    async fn reset(&self, key: &str) -> Result<(), StoreError> {
        self.shard(key).remove(key);
        Ok(())
    }
}

impl MemoryStore {
    fn check_one(&self, check: &RateCheck) -> Decision {
        let mut shard = self.shard(&check.key);
        // Read the clock under the lock so concurrent checks of one key see
        // time move forward, as they would inside Redis.
        let now = self.clock.now_us();
        let state = shard
            .get(&check.key)
            .filter(|e| e.expires_at_us > now)
            .map(|e| e.state);
        let outcome = algorithm::apply(&check.limit, check.cost, now, state);
        if let Some((state, ttl_us)) = outcome.write {
            // Redis keys expire on whole milliseconds (PEXPIRE); match it.
            let ttl_us = ttl_us.div_ceil(1000).max(1) * 1000;
            shard.insert(
                check.key.clone(),
                Entry {
                    state,
                    expires_at_us: now + ttl_us,
                },
            );
        }
        outcome.decision
    }
}
