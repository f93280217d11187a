//! `Submit` on Redis: the period decided by Redis `TIME` inside the script.

use deadpool_redis::redis::Value;
use sha2::{Digest, Sha256};

use super::RedisBoards;
use super::replies::{self, Reply, internal, submitted};
use super::scripts::{ATTEMPTS, PeriodKeys, SCRIPTS, board_key, now_ms, periods_key, sort_arg};
use crate::keys::{self, Tenant};
use crate::services::leaderboard::IDEM_SPACE;
use crate::services::leaderboard::model::Submission;
use crate::services::leaderboard::store::{Limits, Submitted};
use crate::store::StoreError;

impl RedisBoards {
    pub(super) async fn submit_to(
        &self,
        tenant: &Tenant,
        board: &str,
        sub: &Submission,
        limits: Limits,
    ) -> Result<Submitted, StoreError> {
        let mut now = now_ms();
        let mut fresh = false;
        for _ in 0..ATTEMPTS {
            let Some(def) = self.def(tenant, board, fresh).await? else {
                return Ok(Submitted::NoBoard);
            };
            let span = def.period_at(now);
            let k = PeriodKeys::of(tenant, &def, span.start_ms);
            let d = board_key(tenant, board, "d");
            let p = periods_key(tenant, &def);
            let idem = if sub.idempotency_key.is_empty() {
                d.clone()
            } else {
                let digest = Sha256::new()
                    .chain_update(sub.owner_id.as_bytes())
                    .chain_update([0])
                    .chain_update(sub.idempotency_key.as_bytes())
                    .finalize();
                keys::key(
                    tenant,
                    IDEM_SPACE,
                    board,
                    &[&def.generation.to_string(), &hex::encode(&digest[..16])],
                )
            };
            let op = sub.operator.unwrap_or(def.operator);
            let mut call = SCRIPTS.submit.call(
                &[&d, &p, &k.z, &k.h, &k.n, &idem],
                &[
                    def.revision,
                    span.start_ms,
                    span.end_ms.unwrap_or(0),
                    def.expire_at_ms(span).unwrap_or(0),
                    u64::from(def.keep_periods),
                ],
            );
            call.cmd
                .arg(&sub.owner_id)
                .arg(sub.score)
                .arg(sub.subscore)
                .arg(op.as_str())
                .arg(sort_arg(&def))
                .arg(def.tie_break.as_str())
                .arg(def.decrement_floor)
                .arg(&sub.metadata)
                .arg(if sub.idempotency_key.is_empty() {
                    0
                } else {
                    limits.idempotency_ms
                })
                .arg(limits.max_owners);
            match Reply::of(self.redis.eval(call).await?, "submit")? {
                Reply::Ok(items) => return submitted(items, &sub.owner_id, false),
                Reply::Other(kind, items) if kind == "replay" => {
                    return submitted(items, &sub.owner_id, true);
                }
                Reply::Other(kind, items) if kind == "period" => {
                    now = replies::int(items.first().unwrap_or(&Value::Nil), "now")? as u64;
                }
                Reply::Other(kind, _) if kind == "range" => return Ok(Submitted::OutOfRange),
                Reply::Other(kind, _) if kind == "full" => return Ok(Submitted::Full),
                Reply::Other(kind, _) => return Err(internal("submit", kind)),
                Reply::Gone | Reply::Stale => fresh = true,
            }
        }
        Err(internal("submit", "the definition or period kept changing"))
    }
}
