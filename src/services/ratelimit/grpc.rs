//! `datalayer.ratelimit.v1.RateLimitService`: the wire ↔ the domain, then
//! the store. All-or-nothing batches and `Report` are in `grpc/batch.rs`.

mod answers;
mod batch;
mod reserve;

use answers::{answer, fail_open, failed, record, result_label};

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use super::denials::Denials;
use super::store::Store;
use super::{
    Algorithm, Decision, FailMode, Limit, LimitSpec, Limited, MAX_KEY_BYTES, RateCheck, Scope,
    Settings,
};
use crate::error::Error;
use crate::grpc::Ctx;
use crate::grpc::convert::duration_in;
use crate::proto::datalayer::ratelimit::v1 as pb;
use crate::services::analytics::recorder::Recorder;
use crate::validate::{self, FieldViolation, Invalid, quote};

pub struct Handler {
    store: Arc<dyn Store>,
    settings: Settings,
    policies: BTreeMap<Arc<str>, Limit>,
    /// Where the decisions of policies with `analytics = true` are counted.
    analytics: Option<(Arc<Recorder>, BTreeSet<Arc<str>>)>,
    /// Policies with `shadow_mode = true`: decided, counted, answered allowed.
    shadow: BTreeSet<Arc<str>>,
    /// Recent denials, answered without Redis (`ratelimit.denial_cache`).
    denials: Option<Arc<Denials>>,
}

crate::grpc_service! {
    pb::rate_limit_service_server::{RateLimitService, RateLimitServiceServer} for Handler {
        unary Check => check(pb::CheckRequest) -> pb::CheckResponse;
        unary CheckBatch => check_batch(pb::CheckBatchRequest) -> pb::CheckBatchResponse;
        unary Report => report(pb::ReportRequest) -> pb::ReportResponse;
        unary Settle => settle(pb::SettleRequest) -> pb::SettleResponse;
        unary Reset => reset(pb::ResetRequest) -> pb::ResetResponse;
    }
}

/// A validated check and what its answer needs.
struct Parsed {
    check: RateCheck,
    requested_cost: u64,
}

/// Where a request's limit comes from (Check and Reset spell it alike).
enum Source<'a> {
    Inline(&'a pb::Limit),
    Policy(&'a str),
}

impl<'a> From<&'a pb::check_request::LimitSource> for Source<'a> {
    fn from(source: &'a pb::check_request::LimitSource) -> Self {
        match source {
            pb::check_request::LimitSource::Limit(l) => Self::Inline(l),
            pb::check_request::LimitSource::Policy(p) => Self::Policy(p),
        }
    }
}

impl<'a> From<&'a pb::report_request::LimitSource> for Source<'a> {
    fn from(source: &'a pb::report_request::LimitSource) -> Self {
        match source {
            pb::report_request::LimitSource::Limit(l) => Self::Inline(l),
            pb::report_request::LimitSource::Policy(p) => Self::Policy(p),
        }
    }
}

impl<'a> From<&'a pb::settle_request::LimitSource> for Source<'a> {
    fn from(source: &'a pb::settle_request::LimitSource) -> Self {
        match source {
            pb::settle_request::LimitSource::Limit(l) => Self::Inline(l),
            pb::settle_request::LimitSource::Policy(p) => Self::Policy(p),
        }
    }
}

impl<'a> From<&'a pb::reset_request::LimitSource> for Source<'a> {
    fn from(source: &'a pb::reset_request::LimitSource) -> Self {
        match source {
            pb::reset_request::LimitSource::Limit(l) => Self::Inline(l),
            pb::reset_request::LimitSource::Policy(p) => Self::Policy(p),
        }
    }
}

/// An inline limit; field names are relative to the `Limit` message.
fn inline_limit(msg: &pb::Limit) -> Result<Limit, Invalid> {
    use pb::limit::Algorithm as A;
    let fail_mode = match pb::FailMode::try_from(msg.fail_mode) {
        Ok(pb::FailMode::Unspecified | pb::FailMode::Closed) => Ok(FailMode::Closed),
        Ok(pb::FailMode::Open) => Ok(FailMode::Open),
        Err(_) => Err(FieldViolation::new(
            "fail_mode",
            format!("unknown value {}", msg.fail_mode),
        )),
    };
    let spec = |algorithm, limit, (period, name), refill| {
        duration_in(period, name).map(|period| LimitSpec {
            algorithm,
            limit,
            period: (period, name),
            refill,
            fail_mode: FailMode::Closed,
        })
    };
    let spec = match &msg.algorithm {
        None => Err(FieldViolation::new(
            "algorithm",
            "set one of gcra, token_bucket, fixed_window, sliding_window",
        )),
        Some(A::Gcra(g)) => spec(
            Algorithm::Gcra,
            (Some(g.limit), "gcra.limit"),
            (g.period.as_ref(), "gcra.period"),
            None,
        ),
        Some(A::TokenBucket(t)) => spec(
            Algorithm::TokenBucket,
            (Some(t.capacity), "token_bucket.capacity"),
            (t.refill_interval.as_ref(), "token_bucket.refill_interval"),
            Some((Some(t.refill_amount), "token_bucket.refill_amount")),
        ),
        Some(A::FixedWindow(w)) => spec(
            Algorithm::FixedWindow,
            (Some(w.limit), "fixed_window.limit"),
            (w.window.as_ref(), "fixed_window.window"),
            None,
        ),
        Some(A::SlidingWindow(w)) => spec(
            Algorithm::SlidingWindow,
            (Some(w.limit), "sliding_window.limit"),
            (w.window.as_ref(), "sliding_window.window"),
            None,
        ),
    };
    let (fail_mode, spec) = validate::all((fail_mode, spec))?;
    Limit::parse(LimitSpec { fail_mode, ..spec }).map_err(Invalid)
}

impl Handler {
    pub fn new(
        store: Arc<dyn Store>,
        settings: Settings,
        policies: BTreeMap<Arc<str>, Limit>,
        analytics: Option<(Arc<Recorder>, BTreeSet<Arc<str>>)>,
        denials: Option<Arc<Denials>>,
    ) -> Self {
        Self {
            shadow: settings.shadowed(),
            denials,
            store,
            settings,
            policies,
            analytics,
        }
    }

    /// The limit and the scope its state lives under.
    fn limit(&self, source: Option<Source<'_>>) -> Result<(Scope, Limit), Invalid> {
        match source {
            None => Err(Invalid::one(
                "limit",
                "set either `limit` (inline) or `policy` (configured)",
            )),
            Some(Source::Inline(limit)) => Ok((
                Scope::Inline,
                inline_limit(limit).map_err(|e| e.under("limit"))?,
            )),
            Some(Source::Policy(name)) => match self.policies.get_key_value(name) {
                Some((name, limit)) => Ok((Scope::Policy(name.clone()), *limit)),
                None => {
                    let known: Vec<&str> = self.policies.keys().map(|k| &**k).collect();
                    Err(Invalid::one(
                        "policy",
                        if known.is_empty() {
                            format!("unknown policy {}: no policies are configured", quote(name))
                        } else {
                            format!(
                                "unknown policy {}; configured: {}",
                                quote(name),
                                known.join(", ")
                            )
                        },
                    ))
                }
            },
        }
    }

    /// The caller's key and its limit, reporting both sides' violations.
    fn target(&self, key: &str, source: Option<Source<'_>>) -> Result<Limited, Invalid> {
        let (_, (scope, limit)) =
            validate::all((validate::key(key, "key", MAX_KEY_BYTES), self.limit(source)))?;
        Ok(Limited {
            key: key.to_owned(),
            scope,
            limit,
        })
    }

    fn parse(&self, req: &pb::CheckRequest) -> Result<Parsed, Invalid> {
        let target = self.target(&req.key, req.limit_source.as_ref().map(Source::from))?;
        let requested_cost = req.cost.unwrap_or(1);
        Ok(Parsed {
            check: RateCheck {
                cost: target.limit.clamp_cost(requested_cost),
                shadow: self.is_shadow(&target),
                target,
            },
            requested_cost,
        })
    }

    fn is_shadow(&self, target: &Limited) -> bool {
        matches!(&target.scope, Scope::Policy(name) if self.shadow.contains(name))
    }

    /// Runs the checks; when the store is unavailable, limits that fail
    /// open are allowed with `REASON_FAIL_OPEN`, and any that fails closed
    /// makes the call `UNAVAILABLE`.
    async fn apply(&self, ctx: &Ctx, parsed: &[Parsed]) -> Result<Vec<pb::CheckResponse>, Error> {
        // Denials still cached are answered here; the rest go to the store.
        let cached: Vec<Option<Decision>> = match &self.denials {
            Some(denials) => parsed
                .iter()
                .map(|p| denials.lookup(&ctx.tenant, &p.check))
                .collect(),
            None => vec![None; parsed.len()],
        };
        let sent: Vec<&Parsed> = parsed
            .iter()
            .zip(&cached)
            .filter(|(_, c)| c.is_none())
            .map(|(p, _)| p)
            .collect();
        let fresh = if sent.is_empty() {
            Vec::new()
        } else {
            let checks: Vec<RateCheck> = sent.iter().map(|p| p.check.clone()).collect();
            match ctx.store(self.store.check(&ctx.tenant, &checks)).await {
                Ok(decisions) => decisions,
                Err(e) => {
                    failed(&sent, e)?;
                    return Ok(merge_fail_open(self, ctx, parsed, cached));
                }
            }
        };
        let mut fresh = fresh.into_iter();
        let mut answers = Vec::with_capacity(parsed.len());
        for (p, cached) in parsed.iter().zip(cached) {
            let d = match cached {
                Some(d) => d,
                None => {
                    let Some(d) = fresh.next() else {
                        return Err(Error::Internal("a decision is missing".into()));
                    };
                    if let Some(denials) = &self.denials {
                        denials.remember(&ctx.tenant, &p.check, &d);
                    }
                    d
                }
            };
            answers.push(self.decided(ctx, p, d));
        }
        Ok(answers)
    }

    /// Counts a decision (metrics, analytics) and answers it.
    fn decided(&self, ctx: &Ctx, p: &Parsed, d: Decision) -> pb::CheckResponse {
        record(p, result_label(p, d.allowed));
        self.analyze(ctx, p, d.allowed);
        answer(p, d)
    }

    /// Counts the decision for analytics when its policy asks for it.
    fn analyze(&self, ctx: &Ctx, parsed: &Parsed, allowed: bool) {
        let Some((recorder, recorded)) = &self.analytics else {
            return;
        };
        let target = &parsed.check.target;
        if let Scope::Policy(name) = &target.scope
            && recorded.contains(name)
        {
            recorder.record(&ctx.tenant, name, allowed, &target.key);
        }
    }

    async fn check(&self, ctx: Ctx, req: pb::CheckRequest) -> Result<pb::CheckResponse, Error> {
        let parsed = self.parse(&req)?;
        if req.reserve {
            return self.reserve(&ctx, parsed).await;
        }
        self.apply(&ctx, std::slice::from_ref(&parsed))
            .await?
            .pop()
            .ok_or_else(|| Error::Internal("the store returned no decision".to_owned()))
    }

    async fn check_batch(
        &self,
        ctx: Ctx,
        req: pb::CheckBatchRequest,
    ) -> Result<pb::CheckBatchResponse, Error> {
        validate::batch(
            req.checks.len(),
            "checks",
            self.settings.max_batch,
            "ratelimit.max_batch",
        )?;
        let parsed = validate::each(&req.checks, "checks", |c| {
            let reserve = if c.reserve {
                Err(FieldViolation::new(
                    "reserve",
                    "is for Check only: reserve each limit with its own Check",
                ))
            } else {
                Ok(())
            };
            validate::all((reserve, self.parse(c))).map(|(_, p)| p)
        })?;
        let results = if req.all_or_nothing {
            self.apply_all(&ctx, &parsed).await?
        } else {
            self.apply(&ctx, &parsed).await?
        };
        Ok(pb::CheckBatchResponse { results })
    }

    async fn reset(&self, ctx: Ctx, req: pb::ResetRequest) -> Result<pb::ResetResponse, Error> {
        ctx.audit_target(crate::audit::target(&[&req.key]));
        let target = self.target(&req.key, req.limit_source.as_ref().map(Source::from))?;
        ctx.store(self.store.reset(&ctx.tenant, &target)).await?;
        if let Some(denials) = &self.denials {
            denials.forget(&ctx.tenant, &target.key);
        }
        Ok(pb::ResetResponse {})
    }
}

/// Answers of a call whose store failed while some checks were cached
/// denials and the others all fail open.
fn merge_fail_open(
    handler: &Handler,
    ctx: &Ctx,
    parsed: &[Parsed],
    cached: Vec<Option<Decision>>,
) -> Vec<pb::CheckResponse> {
    parsed
        .iter()
        .zip(cached)
        .map(|(p, c)| match c {
            Some(d) => handler.decided(ctx, p, d),
            None => fail_open(p),
        })
        .collect()
}
