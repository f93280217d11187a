//! All-or-nothing batches and `Report`.

use std::collections::BTreeMap;

use super::answers::{answer, failed, record, result_label};
use super::{Handler, Parsed, Source};
use crate::error::Error;
use crate::grpc::Ctx;
use crate::grpc::convert::duration_out;
use crate::proto::datalayer::ratelimit::v1 as pb;
use crate::services::ratelimit::{RateCheck, Scope};
use crate::validate::{FieldViolation, Invalid};

/// The most a report may overdraw, as a multiple of the limit.
pub const MAX_REPORT_LIMITS: u64 = 100;

/// The (key, scope, algorithm) a check's state lives under: two checks of
/// an all-or-nothing batch must not share one.
fn state_of(p: &Parsed) -> (&str, &Scope, &'static str) {
    let t = &p.check.target;
    (&t.key, &t.scope, t.limit.algorithm.as_str())
}

impl Handler {
    /// Every check consumes, or none does.
    pub(super) async fn apply_all(
        &self,
        ctx: &Ctx,
        parsed: &[Parsed],
    ) -> Result<Vec<pb::CheckResponse>, Error> {
        let mut seen = BTreeMap::new();
        let mut bad = Vec::new();
        for (i, p) in parsed.iter().enumerate() {
            if let Some(first) = seen.insert(state_of(p), i) {
                bad.push(FieldViolation::new(
                    format!("checks[{i}]"),
                    format!(
                        "has the key and limit of checks[{first}]; an all-or-nothing batch needs each once (add their costs)"
                    ),
                ));
            }
        }
        if !bad.is_empty() {
            return Err(Error::InvalidArgument(Invalid(bad)));
        }
        let checks: Vec<RateCheck> = parsed.iter().map(|p| p.check.clone()).collect();
        let (all, decisions) = match ctx.store(self.store.check_all(&ctx.tenant, &checks)).await {
            Ok(Some(done)) => done,
            Ok(None) => {
                return Err(Error::FailedPrecondition(
                    "on Redis Cluster an all-or-nothing batch must keep its states in one hash slot: use one key under several limits or policies, or send the checks without all_or_nothing".to_owned(),
                ));
            }
            Err(e) => return failed(&parsed.iter().collect::<Vec<_>>(), e),
        };
        if all {
            return Ok(parsed
                .iter()
                .zip(decisions)
                .map(|(p, d)| self.decided(ctx, p, d))
                .collect());
        }
        Ok(parsed
            .iter()
            .zip(decisions)
            .map(|(p, d)| {
                if d.allowed && !p.check.shadow {
                    // It fitted alone but consumed nothing.
                    record(p, "rejected");
                    self.analyze(ctx, p, false);
                    let mut held = answer(p, d);
                    held.allowed = false;
                    held.retry_after = None;
                    held.reason = pb::Reason::BatchRejected as i32;
                    held
                } else {
                    self.decided(ctx, p, d)
                }
            })
            .collect())
    }

    pub(super) async fn report(
        &self,
        ctx: Ctx,
        req: pb::ReportRequest,
    ) -> Result<pb::ReportResponse, Error> {
        let target = self.target(&req.key, req.limit_source.as_ref().map(Source::from))?;
        let most = target.limit.limit.saturating_mul(MAX_REPORT_LIMITS);
        if req.cost == 0 || req.cost > most {
            return Err(Error::invalid(
                "cost",
                format!(
                    "must be 1 to {most} ({MAX_REPORT_LIMITS} times the limit), got {}",
                    req.cost
                ),
            ));
        }
        let check = RateCheck {
            cost: req.cost,
            shadow: self.is_shadow(&target),
            target,
        };
        let parsed = Parsed {
            check,
            requested_cost: req.cost,
        };
        let d = ctx
            .store(self.store.report(&ctx.tenant, &parsed.check))
            .await?;
        record(&parsed, result_label(&parsed, d.allowed));
        Ok(pb::ReportResponse {
            limit: parsed.check.target.limit.limit,
            remaining: d.remaining,
            reset_after: Some(duration_out(d.reset_after_us)),
            overdrawn: !d.allowed,
        })
    }
}
