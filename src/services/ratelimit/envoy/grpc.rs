//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`.
//!
//! Every descriptor is evaluated, each against its own counter, in one
//! round trip; the overall code is OVER_LIMIT when any descriptor not in
//! shadow mode is. `hits_addend` counts per descriptor when set (0 checks
//! without counting), else per request (0 means 1).

use std::collections::HashSet;
use std::sync::Arc;

use super::{Config, DECISIONS, EnvoySettings, Kind, Node, find, override_node};
use crate::error::Error;
use crate::grpc::Ctx;
use crate::proto::envoy::config::core::v3::HeaderValue;
use crate::proto::envoy::service::ratelimit::v3::{self as pb, rate_limit_response as resp};
use crate::services::ratelimit::store::Store;
use crate::services::ratelimit::{Limited, RateCheck, Scope};
use crate::validate::{self, FieldViolation};

/// Most descriptors in one request, and entries in one descriptor.
const MAX_DESCRIPTORS: usize = 64;
const MAX_ENTRIES: usize = 16;
/// Longest entry key or value, in bytes.
const MAX_ENTRY_BYTES: usize = 256;

pub struct Handler {
    store: Arc<dyn Store>,
    config: Arc<Config>,
    settings: EnvoySettings,
}

crate::grpc_service! {
    pb::rate_limit_service_server::{RateLimitService, RateLimitServiceServer} for Handler {
        unary ShouldRateLimit => should_rate_limit(pb::RateLimitRequest) -> pb::RateLimitResponse;
    }
}

/// One descriptor's place in the answer.
enum Plan<'a> {
    /// Nothing applies (no match, no limit, replaced, unknown domain).
    Ok,
    Unlimited(&'a Node),
    Blocked(&'a Node),
    /// Index into the store's checks.
    Check(&'a Node, usize),
}

/// Checks the request, and builds the limits Envoy sent with its
/// descriptors (one per descriptor, `None` where none was sent).
fn validate_request(req: &pb::RateLimitRequest) -> Result<Vec<Option<Node>>, validate::Invalid> {
    let mut bad = Vec::new();
    let mut overrides = Vec::with_capacity(req.descriptors.len());
    if req.domain.is_empty() {
        bad.push(FieldViolation::new("domain", "must not be empty"));
    }
    if req.descriptors.is_empty() || req.descriptors.len() > MAX_DESCRIPTORS {
        bad.push(FieldViolation::new(
            "descriptors",
            format!("must hold 1 to {MAX_DESCRIPTORS} descriptors"),
        ));
    }
    for (i, d) in req.descriptors.iter().enumerate() {
        if d.entries.is_empty() || d.entries.len() > MAX_ENTRIES {
            bad.push(FieldViolation::new(
                format!("descriptors[{i}].entries"),
                format!("must hold 1 to {MAX_ENTRIES} entries"),
            ));
        }
        overrides.push(d.limit.as_ref().and_then(|l| {
            let key = d.entries.first().map_or("", |e| e.key.as_str());
            override_node(key, l.requests_per_unit, l.unit)
                .map_err(|(field, problem)| {
                    bad.push(FieldViolation::new(
                        format!("descriptors[{i}].limit.{field}"),
                        problem,
                    ));
                })
                .ok()
        }));
        for (j, e) in d.entries.iter().enumerate() {
            if e.key.is_empty() || e.key.len() > MAX_ENTRY_BYTES || e.value.len() > MAX_ENTRY_BYTES
            {
                bad.push(FieldViolation::new(
                    format!("descriptors[{i}].entries[{j}]"),
                    format!(
                        "key must be 1 to {MAX_ENTRY_BYTES} bytes, value at most {MAX_ENTRY_BYTES}"
                    ),
                ));
            }
        }
    }
    if bad.is_empty() {
        Ok(overrides)
    } else {
        Err(validate::Invalid(bad))
    }
}

fn code(over: bool) -> i32 {
    if over {
        resp::Code::OverLimit as i32
    } else {
        resp::Code::Ok as i32
    }
}

fn current(node: &Node) -> Option<resp::RateLimit> {
    let rule = node.rule.as_ref()?;
    Some(resp::RateLimit {
        name: rule.name.clone(),
        requests_per_unit: rule.requests_per_unit.min(u64::from(u32::MAX)) as u32,
        unit: rule.unit as i32,
    })
}

/// The time left in the current window of `node`'s unit (windows are
/// aligned to the epoch, as the store's fixed windows are).
fn window_left_us(node: &Node) -> u64 {
    let window = node
        .rule
        .as_ref()
        .map_or(1_000_000, |r| r.unit.window().as_micros() as u64);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    window - now % window
}

fn seconds(us: u64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: us.div_ceil(1_000_000) as i64,
        nanos: 0,
    }
}

impl Handler {
    pub fn new(store: Arc<dyn Store>, config: Arc<Config>, settings: EnvoySettings) -> Self {
        Self {
            store,
            config,
            settings,
        }
    }

    async fn should_rate_limit(
        &self,
        ctx: Ctx,
        req: pb::RateLimitRequest,
    ) -> Result<pb::RateLimitResponse, Error> {
        let overrides = validate_request(&req)?;
        let domains = self.config.domains();
        let configured = domains.0.get(&req.domain);
        let tree = configured.map(Vec::as_slice).unwrap_or(&[]);
        let request_hits = if req.hits_addend == 0 {
            1
        } else {
            u64::from(req.hits_addend)
        };
        let scope = Scope::Policy(Arc::from(format!("envoy.{}", req.domain)));
        // Limits named in any matched rule's `replaces` do not apply.
        let matched: Vec<Option<&Node>> = req
            .descriptors
            .iter()
            .zip(&overrides)
            .map(|(d, sent)| {
                // Envoy's limit replaces the file's, in a configured
                // domain only (as envoyproxy/ratelimit).
                if let Some(sent) = sent.as_ref().filter(|_| configured.is_some()) {
                    return Some(sent);
                }
                let entries: Vec<(&str, &str)> = d
                    .entries
                    .iter()
                    .map(|e| (e.key.as_str(), e.value.as_str()))
                    .collect();
                find(tree, &entries).filter(|n| n.rule.is_some())
            })
            .collect();
        let replaced: HashSet<&str> = matched
            .iter()
            .flatten()
            .flat_map(|n| {
                n.rule
                    .iter()
                    .flat_map(|r| r.replaces.iter().map(String::as_str))
            })
            .collect();
        let mut checks = Vec::new();
        let mut plans = Vec::with_capacity(req.descriptors.len());
        for ((d, node), sent) in req.descriptors.iter().zip(&matched).zip(&overrides) {
            let Some(node) = node.filter(|n| {
                n.rule
                    .as_ref()
                    .is_some_and(|r| r.name.is_empty() || !replaced.contains(r.name.as_str()))
            }) else {
                plans.push(Plan::Ok);
                continue;
            };
            let rule = node.rule.as_ref().expect("filtered on a rule");
            plans.push(match &rule.kind {
                Kind::Unlimited => Plan::Unlimited(node),
                Kind::Blocked => Plan::Blocked(node),
                Kind::Limited(limit) => {
                    let hits = d.hits_addend.map_or(request_hits, |h| h);
                    let mut key = req.domain.clone();
                    // Lengths first: no two descriptors share a counter.
                    for e in &d.entries {
                        key.push_str(&format!(
                            "|{}:{}={}:{}",
                            e.key.len(),
                            e.key,
                            e.value.len(),
                            e.value
                        ));
                    }
                    if sent.is_some() {
                        // Its own counter: a file rule's, or another
                        // override's, never mixes with it.
                        key.push_str(&format!(
                            "|limit:{}/{}",
                            rule.requests_per_unit, rule.unit as i32
                        ));
                    }
                    checks.push(RateCheck {
                        cost: limit.clamp_cost(hits),
                        shadow: false,
                        target: Limited {
                            key,
                            scope: scope.clone(),
                            limit: *limit,
                        },
                    });
                    Plan::Check(node, checks.len() - 1)
                }
            });
        }
        let decisions = if checks.is_empty() {
            Vec::new()
        } else {
            ctx.store(self.store.check(&ctx.tenant, &checks)).await?
        };
        let mut overall_over = false;
        let mut statuses = Vec::with_capacity(plans.len());
        for plan in &plans {
            let (status, node, result) = match plan {
                Plan::Ok => (
                    pb::rate_limit_response::DescriptorStatus {
                        code: code(false),
                        ..Default::default()
                    },
                    None,
                    "ok",
                ),
                Plan::Unlimited(n) => (
                    pb::rate_limit_response::DescriptorStatus {
                        code: code(false),
                        limit_remaining: u32::MAX,
                        ..Default::default()
                    },
                    Some(*n),
                    "unlimited",
                ),
                Plan::Blocked(n) => (
                    pb::rate_limit_response::DescriptorStatus {
                        code: code(true),
                        current_limit: current(n),
                        duration_until_reset: Some(seconds(window_left_us(n))),
                        ..Default::default()
                    },
                    Some(*n),
                    "over_limit",
                ),
                Plan::Check(n, i) => {
                    let d = decisions.get(*i).ok_or_else(|| {
                        Error::Internal("the store answered a short batch".to_owned())
                    })?;
                    (
                        pb::rate_limit_response::DescriptorStatus {
                            code: code(!d.allowed),
                            current_limit: current(n),
                            limit_remaining: if d.allowed {
                                d.remaining.min(u64::from(u32::MAX)) as u32
                            } else {
                                0
                            },
                            duration_until_reset: Some(seconds(
                                match d.retry_after_us.unwrap_or(d.reset_after_us) {
                                    0 => window_left_us(n),
                                    us => us,
                                },
                            )),
                            quota: None,
                        },
                        Some(*n),
                        if d.allowed { "ok" } else { "over_limit" },
                    )
                }
            };
            let over = status.code == code(true);
            let shadow = node.is_some_and(|n| n.shadow);
            let mut status = status;
            if shadow && over {
                status.code = code(false);
            }
            overall_over |= over && !shadow;
            if let Some(n) = node {
                let result = if shadow && over {
                    "shadow_over_limit"
                } else {
                    result
                };
                metrics::counter!(DECISIONS, "domain" => req.domain.clone(), "descriptor" => n.path.to_string(), "result" => result)
                    .increment(1);
            }
            statuses.push(status);
        }
        let headers = if self.settings.response_headers {
            headers(&statuses)
        } else {
            Vec::new()
        };
        Ok(pb::RateLimitResponse {
            overall_code: code(overall_over && !self.settings.shadow_mode),
            statuses,
            response_headers_to_add: headers,
            ..Default::default()
        })
    }
}

/// The headers of the most constrained limit (the least remaining).
fn headers(statuses: &[pb::rate_limit_response::DescriptorStatus]) -> Vec<HeaderValue> {
    let Some(tight) = statuses
        .iter()
        .filter(|s| s.current_limit.is_some())
        .min_by_key(|s| s.limit_remaining)
    else {
        return Vec::new();
    };
    let header = |key: &str, value: String| HeaderValue {
        key: key.to_owned(),
        value,
        ..Default::default()
    };
    vec![
        header(
            "RateLimit-Limit",
            tight
                .current_limit
                .as_ref()
                .map_or(0, |l| l.requests_per_unit)
                .to_string(),
        ),
        header("RateLimit-Remaining", tight.limit_remaining.to_string()),
        header(
            "RateLimit-Reset",
            tight
                .duration_until_reset
                .as_ref()
                .map_or(0, |d| d.seconds)
                .to_string(),
        ),
    ]
}
