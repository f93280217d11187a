//! `datalayer.v1.RateLimitService`: parse (validate) → apply (store) → map.

use std::{collections::BTreeMap, sync::Arc};

use tonic::{Request, Response, Status};

use crate::error::{Error, FieldViolation};
use crate::keys::{KeyBuilder, Service};
use crate::proto::{
    self, CheckBatchRequest, CheckBatchResponse, CheckRequest, CheckResponse, ResetRequest,
    ResetResponse, rate_limit_service_server::RateLimitService,
};
use crate::ratelimit::{self, Decision, FailMode, Limit, RateCheck};
use crate::rpc::{self, Call, Deadlines, Method};
use crate::services::duration;
use crate::store::{RateLimitStore, StoreError};

const SERVICE: &str = "datalayer.v1.RateLimitService";
static CHECK: Method = Method {
    service: SERVICE,
    method: "Check",
    full: "datalayer.v1.RateLimitService/Check",
};
static CHECK_BATCH: Method = Method {
    service: SERVICE,
    method: "CheckBatch",
    full: "datalayer.v1.RateLimitService/CheckBatch",
};
static RESET: Method = Method {
    service: SERVICE,
    method: "Reset",
    full: "datalayer.v1.RateLimitService/Reset",
};

pub struct RateLimitHandler {
    store: Arc<dyn RateLimitStore>,
    keys: KeyBuilder,
    policies: BTreeMap<String, Limit>,
    max_batch: usize,
    deadlines: Deadlines,
}

/// A validated check: the store's view plus what the answer needs.
struct ParsedCheck {
    check: RateCheck,
    requested_cost: u64,
    /// The policy's name, or "inline": a metrics label of bounded variety.
    policy: String,
}

impl RateLimitHandler {
    pub fn new(
        store: Arc<dyn RateLimitStore>,
        keys: KeyBuilder,
        policies: BTreeMap<String, Limit>,
        max_batch: usize,
        deadlines: Deadlines,
    ) -> Self {
        Self {
            store,
            keys,
            policies,
            max_batch,
            deadlines,
        }
    }

    /// Resolves `limit | policy` and names the store key. State is scoped by
    /// policy (or "inline") and algorithm, so one caller key can carry
    /// several independent limits. Reports the key's and the limit's
    /// violations together.
    fn resolve(
        &self,
        key: &str,
        source: Option<LimitSource<'_>>,
    ) -> Result<(String, Limit), Vec<FieldViolation>> {
        let key_ok = ratelimit::validate_key(key, "key");
        let limit = self.resolve_limit(source);
        let (scope, limit) = match (key_ok, limit) {
            (Ok(()), Ok(resolved)) => resolved,
            (k, l) => return Err(k.err().into_iter().chain(l.err()).collect()),
        };
        let store_key = self
            .keys
            .key(Service::RateLimit, key, &[&scope, limit.algorithm.as_str()]);
        Ok((store_key, limit))
    }

    /// The limit and the scope its state lives under.
    fn resolve_limit(
        &self,
        source: Option<LimitSource<'_>>,
    ) -> Result<(String, Limit), FieldViolation> {
        Ok(match source {
            None => {
                return Err(FieldViolation::new(
                    "limit",
                    "set either `limit` (inline) or `policy` (configured)",
                ));
            }
            Some(LimitSource::Inline(limit)) => (
                "inline".to_owned(),
                Limit::from_proto(limit).map_err(|v| v.under("limit"))?,
            ),
            Some(LimitSource::Policy(name)) => {
                let limit = self.policies.get(name).ok_or_else(|| {
                    let known: Vec<&str> = self.policies.keys().map(String::as_str).collect();
                    FieldViolation::new(
                        "policy",
                        if known.is_empty() {
                            format!("unknown policy `{name}`: no policies are configured")
                        } else {
                            format!("unknown policy `{name}`; configured: {}", known.join(", "))
                        },
                    )
                })?;
                (format!("p={name}"), *limit)
            }
        })
    }

    fn parse_check(&self, req: &CheckRequest) -> Result<ParsedCheck, Vec<FieldViolation>> {
        let source = req.limit_source.as_ref().map(LimitSource::from_check);
        let (key, limit) = self.resolve(&req.key, source)?;
        let requested_cost = req.cost.unwrap_or(1);
        let policy = match &req.limit_source {
            Some(proto::check_request::LimitSource::Policy(name)) => name.clone(),
            _ => "inline".to_owned(),
        };
        Ok(ParsedCheck {
            policy,
            check: RateCheck {
                key,
                cost: limit.clamp_cost(requested_cost),
                limit,
            },
            requested_cost,
        })
    }

    /// Runs the checks; when the store is down, limits that fail open are
    /// allowed with `REASON_FAIL_OPEN`, and any that fails closed makes the
    /// call `UNAVAILABLE`.
    #[tracing::instrument(skip_all, fields(checks = parsed.len()))]
    async fn apply(&self, parsed: &[ParsedCheck], call: Call) -> Result<Vec<CheckResponse>, Error> {
        let checks: Vec<RateCheck> = parsed.iter().map(|p| p.check.clone()).collect();
        match call.store(self.store.check(&checks)).await {
            Ok(decisions) => Ok(parsed
                .iter()
                .zip(decisions)
                .map(|(p, d)| {
                    record_decision(p, if d.allowed { "allowed" } else { "rejected" });
                    answer(p, d)
                })
                .collect()),
            Err(StoreError::Unavailable(reason))
                if parsed
                    .iter()
                    .all(|p| p.check.limit.fail_mode == FailMode::Open) =>
            {
                tracing::warn!(%reason, "store unavailable; failing open");
                for p in parsed {
                    record_decision(p, "fail_open");
                }
                Ok(parsed.iter().map(fail_open).collect())
            }
            Err(e) => Err(e.into()),
        }
    }
}

enum LimitSource<'a> {
    Inline(&'a proto::Limit),
    Policy(&'a str),
}

impl<'a> LimitSource<'a> {
    fn from_check(source: &'a proto::check_request::LimitSource) -> Self {
        match source {
            proto::check_request::LimitSource::Limit(l) => Self::Inline(l),
            proto::check_request::LimitSource::Policy(p) => Self::Policy(p),
        }
    }

    fn from_reset(source: &'a proto::reset_request::LimitSource) -> Self {
        match source {
            proto::reset_request::LimitSource::Limit(l) => Self::Inline(l),
            proto::reset_request::LimitSource::Policy(p) => Self::Policy(p),
        }
    }
}

fn record_decision(parsed: &ParsedCheck, result: &'static str) {
    metrics::counter!(
        crate::metrics::RATELIMIT_DECISIONS,
        "policy" => parsed.policy.clone(),
        "result" => result,
    )
    .increment(1);
}

fn answer(parsed: &ParsedCheck, d: Decision) -> CheckResponse {
    let limit = parsed.check.limit.limit;
    let reason = if d.allowed {
        proto::Reason::WithinLimit
    } else if parsed.requested_cost > limit {
        proto::Reason::CostExceedsLimit
    } else {
        proto::Reason::OverLimit
    };
    CheckResponse {
        allowed: d.allowed,
        limit,
        remaining: d.remaining,
        reset_after: Some(duration(d.reset_after_us)),
        retry_after: d.retry_after_us.map(duration),
        reason: reason as i32,
    }
}

fn fail_open(parsed: &ParsedCheck) -> CheckResponse {
    CheckResponse {
        allowed: true,
        limit: parsed.check.limit.limit,
        remaining: 0,
        reset_after: Some(duration(0)),
        retry_after: None,
        reason: proto::Reason::FailOpen as i32,
    }
}

#[tonic::async_trait]
impl RateLimitService for RateLimitHandler {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        rpc::serve(&CHECK, self.deadlines, request, |req, call| async move {
            let parsed = self.parse_check(&req).map_err(Error::InvalidArgument)?;
            let mut answers = self.apply(std::slice::from_ref(&parsed), call).await?;
            answers
                .pop()
                .ok_or_else(|| Error::Internal("the store returned no decision".to_owned()))
        })
        .await
    }

    async fn check_batch(
        &self,
        request: Request<CheckBatchRequest>,
    ) -> Result<Response<CheckBatchResponse>, Status> {
        rpc::serve(
            &CHECK_BATCH,
            self.deadlines,
            request,
            |req, call| async move {
                if req.checks.is_empty() {
                    return Err(Error::invalid("checks", "must hold at least one check"));
                }
                if req.checks.len() > self.max_batch {
                    return Err(Error::invalid(
                        "checks",
                        format!(
                            "at most {} checks per batch, got {}",
                            self.max_batch,
                            req.checks.len()
                        ),
                    ));
                }
                let mut parsed = Vec::with_capacity(req.checks.len());
                let mut violations = Vec::new();
                for (i, check) in req.checks.iter().enumerate() {
                    match self.parse_check(check) {
                        Ok(p) => parsed.push(p),
                        Err(vs) => violations
                            .extend(vs.into_iter().map(|v| v.under(&format!("checks[{i}]")))),
                    }
                }
                if !violations.is_empty() {
                    return Err(Error::InvalidArgument(violations));
                }
                let results = self.apply(&parsed, call).await?;
                Ok(CheckBatchResponse { results })
            },
        )
        .await
    }

    async fn reset(
        &self,
        request: Request<ResetRequest>,
    ) -> Result<Response<ResetResponse>, Status> {
        rpc::serve(&RESET, self.deadlines, request, |req, call| async move {
            let source = req.limit_source.as_ref().map(LimitSource::from_reset);
            let (key, _) = self
                .resolve(&req.key, source)
                .map_err(Error::InvalidArgument)?;
            call.store(self.store.reset(&key)).await?;
            Ok(ResetResponse {})
        })
        .await
    }
}
