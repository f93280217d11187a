//! Reserving checks and `Settle` (see `reservation.rs`).

use super::answers::{failed, result_label};
use super::batch::MAX_REPORT_LIMITS;
use super::{Handler, Parsed, Source};
use crate::error::Error;
use crate::grpc::Ctx;
use crate::grpc::convert::duration_out;
use crate::proto::datalayer::ratelimit::v1 as pb;
use crate::services::ratelimit::reservation::{Reservation, SettleResult, Settlement};
use crate::validate::{self, FieldViolation};

impl Handler {
    /// A Check with `reserve = true`: when it consumes, its answer carries
    /// the reservation to settle. A cached denial, a cost of 0 and a check
    /// that fails open reserve nothing.
    pub(super) async fn reserve(
        &self,
        ctx: &Ctx,
        parsed: Parsed,
    ) -> Result<pb::CheckResponse, Error> {
        let cached = self
            .denials
            .as_ref()
            .and_then(|d| d.lookup(&ctx.tenant, &parsed.check));
        if cached.is_some() || parsed.check.cost == 0 {
            return self
                .apply(ctx, std::slice::from_ref(&parsed))
                .await?
                .pop()
                .ok_or_else(|| Error::Internal("the store returned no decision".to_owned()));
        }
        let reservation = Reservation::new(parsed.check.cost)
            .map_err(|e| Error::Internal(format!("no randomness for a reservation id: {e}")))?;
        let stored = self
            .store
            .reserve(&ctx.tenant, &parsed.check, &reservation.id);
        let d = match ctx.store(stored).await {
            Ok(d) => d,
            Err(e) => {
                return failed(&[&parsed], e)?
                    .pop()
                    .ok_or_else(|| Error::Internal("no fail-open answer".to_owned()));
            }
        };
        if let Some(denials) = &self.denials {
            denials.remember(&ctx.tenant, &parsed.check, &d);
        }
        let mut answer = self.decided(ctx, &parsed, d);
        if d.allowed {
            answer.reservation = reservation.token();
        }
        Ok(answer)
    }

    pub(super) async fn settle(
        &self,
        ctx: Ctx,
        req: pb::SettleRequest,
    ) -> Result<pb::SettleResponse, Error> {
        let (target, reservation) = validate::all((
            self.target(&req.key, req.limit_source.as_ref().map(Source::from)),
            Reservation::parse(&req.reservation, "reservation"),
        ))?;
        // Judged against the limit, so once it is known.
        let most = target.limit.limit.saturating_mul(MAX_REPORT_LIMITS);
        let cost = if req.cost > most {
            Err(FieldViolation::new(
                "cost",
                format!(
                    "must be 0 to {most} ({MAX_REPORT_LIMITS} times the limit), got {}",
                    req.cost
                ),
            ))
        } else {
            Ok(req.cost)
        };
        let (_, cost) = validate::all((reservation.fits(&target.limit, "reservation"), cost))?;
        let settlement = Settlement::new(reservation.cost, cost);
        let settled = ctx
            .store(
                self.store
                    .settle(&ctx.tenant, &target, &reservation, settlement),
            )
            .await?;
        let d = settled.decision;
        let parsed = Parsed {
            check: crate::services::ratelimit::RateCheck {
                cost: settlement.extra,
                shadow: self.is_shadow(&target),
                target,
            },
            requested_cost: settlement.extra,
        };
        if settled.result != SettleResult::AlreadySettled && settlement.extra > 0 {
            super::answers::record(&parsed, result_label(&parsed, d.allowed));
        }
        if let Some(denials) = &self.denials
            && settlement.give_back > 0
        {
            // Given back: a denial cached before may no longer hold.
            denials.forget(&ctx.tenant, &parsed.check.target.key);
        }
        let result = match settled.result {
            SettleResult::Settled => pb::SettleResult::Settled,
            SettleResult::AlreadySettled => pb::SettleResult::AlreadySettled,
            SettleResult::Expired => pb::SettleResult::Expired,
        };
        Ok(pb::SettleResponse {
            result: result as i32,
            limit: parsed.check.target.limit.limit,
            remaining: d.remaining,
            reset_after: Some(duration_out(d.reset_after_us)),
            overdrawn: !d.allowed,
        })
    }
}
