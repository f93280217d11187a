//! Counters and locks.

use std::time::Duration;

use tokio::time::Instant;

use super::Handler;
use crate::error::Error;
use crate::grpc::Ctx;
use crate::grpc::convert::{duration_in, duration_out};
use crate::proto::datalayer::state::v1 as pb;
use crate::services::state::settings::counter_amount;
use crate::services::state::{self as state, Acquire, Increment};
use crate::validate::{self, FieldViolation};

/// A waiting `AcquireLock` tries again at least this often.
const LOCK_POLL: Duration = Duration::from_millis(50);
/// A waiting `AcquireLock` answers this long before the call's deadline,
/// so the caller gets "not acquired" rather than `DEADLINE_EXCEEDED`.
const LOCK_ANSWER_MARGIN: Duration = Duration::from_millis(20);

fn bound(value: Option<i64>, field: &str) -> Result<Option<i64>, FieldViolation> {
    value.map(|v| counter_amount(v, field)).transpose()
}

fn lease_id(id: &str) -> Result<(), FieldViolation> {
    if state::is_valid_lease_id(id) {
        Ok(())
    } else {
        Err(FieldViolation::new(
            "lease_id",
            format!(
                "is not a lease AcquireLock issued (32 hex characters), got {}",
                validate::quote(id)
            ),
        ))
    }
}

impl Handler {
    pub(super) async fn increment(
        &self,
        ctx: Ctx,
        req: pb::IncrementRequest,
    ) -> Result<pb::IncrementResponse, Error> {
        let ttl = duration_in(req.ttl.as_ref(), "ttl").and_then(|ttl| self.settings.ttl(ttl));
        let (_, delta, ttl_ms, min, max) = validate::all((
            self.names(&req.collection, &req.key),
            counter_amount(req.delta, "delta"),
            ttl,
            bound(req.min, "min"),
            bound(req.max, "max"),
        ))?;
        if let (Some(lo), Some(hi)) = (min, max)
            && lo > hi
        {
            return Err(Error::invalid(
                "max",
                format!("must be at least min ({lo}), got {hi}"),
            ));
        }
        let inc = Increment {
            delta,
            ttl_ms,
            min,
            max,
        };
        let (applied, value) = ctx
            .store(
                self.store
                    .increment(&ctx.tenant, &req.collection, &req.key, inc),
            )
            .await?;
        Ok(pb::IncrementResponse { applied, value })
    }

    pub(super) async fn get_counters(
        &self,
        ctx: Ctx,
        req: pb::GetCountersRequest,
    ) -> Result<pb::GetCountersResponse, Error> {
        validate::all((
            state::name(&req.collection, "collection"),
            self.settings.keys(&req.keys, "keys"),
        ))?;
        let values = ctx
            .store(self.store.counters(&ctx.tenant, &req.collection, &req.keys))
            .await?;
        Ok(pb::GetCountersResponse { values })
    }

    /// Tries the lock; while another lease holds it, tries again (at least
    /// every 50 ms, sooner when that lease ends sooner) until `wait` or the
    /// call's deadline runs out. Waiters are not queued: whoever tries
    /// first after the lock frees takes it.
    pub(super) async fn acquire_lock(
        &self,
        ctx: Ctx,
        req: pb::AcquireLockRequest,
    ) -> Result<pb::AcquireLockResponse, Error> {
        let s = &self.settings;
        let ttl = duration_in(req.ttl.as_ref(), "ttl").and_then(|ttl| s.lock_ttl(ttl));
        let wait = duration_in(req.wait.as_ref(), "wait").and_then(|w| s.lock_wait(w));
        let (_, ttl_ms, wait) = validate::all((state::name(&req.name, "name"), ttl, wait))?;
        let lease = state::new_lease_id()
            .map_err(|e| Error::Internal(format!("no randomness for a lease id: {e}")))?;
        let started = Instant::now();
        let answer_by = ctx
            .deadline()
            .checked_sub(LOCK_ANSWER_MARGIN)
            .unwrap_or(started);
        let give_up = (started + wait).min(answer_by);
        loop {
            let attempt = self
                .store
                .acquire_lock(&ctx.tenant, &req.name, &lease, ttl_ms);
            match ctx.store(attempt).await? {
                Acquire::Acquired { fencing_token } => {
                    return Ok(pb::AcquireLockResponse {
                        acquired: true,
                        lease_id: lease,
                        fencing_token,
                        retry_after: None,
                    });
                }
                Acquire::Held { retry_after_ms } => {
                    let now = Instant::now();
                    if now >= give_up {
                        return Ok(pb::AcquireLockResponse {
                            acquired: false,
                            retry_after: Some(duration_out(retry_after_ms * 1000)),
                            ..Default::default()
                        });
                    }
                    let nap = Duration::from_millis(retry_after_ms.max(1))
                        .min(LOCK_POLL)
                        .min(give_up - now);
                    tokio::time::sleep(nap).await;
                }
            }
        }
    }

    pub(super) async fn renew_lock(
        &self,
        ctx: Ctx,
        req: pb::RenewLockRequest,
    ) -> Result<pb::RenewLockResponse, Error> {
        let ttl = duration_in(req.ttl.as_ref(), "ttl").and_then(|t| self.settings.lock_ttl(t));
        let (_, _, ttl_ms) =
            validate::all((state::name(&req.name, "name"), lease_id(&req.lease_id), ttl))?;
        let renewed = ctx
            .store(
                self.store
                    .renew_lock(&ctx.tenant, &req.name, &req.lease_id, ttl_ms),
            )
            .await?;
        match renewed {
            Some(fencing_token) => Ok(pb::RenewLockResponse { fencing_token }),
            None => Err(Error::FailedPrecondition(format!(
                "lock lost: this lease no longer holds lock {} (it expired or was released); stop acting as its holder and acquire it again",
                req.name
            ))),
        }
    }

    pub(super) async fn release_lock(
        &self,
        ctx: Ctx,
        req: pb::ReleaseLockRequest,
    ) -> Result<pb::ReleaseLockResponse, Error> {
        validate::all((state::name(&req.name, "name"), lease_id(&req.lease_id)))?;
        let released = ctx
            .store(
                self.store
                    .release_lock(&ctx.tenant, &req.name, &req.lease_id),
            )
            .await?;
        Ok(pb::ReleaseLockResponse { released })
    }
}
