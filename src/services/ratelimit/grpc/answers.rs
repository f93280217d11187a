//! What a decision answers, and how it is counted.

use super::Parsed;
use crate::error::Error;
use crate::grpc::convert::duration_out;
use crate::proto::datalayer::ratelimit::v1 as pb;
use crate::services::ratelimit::{Decision, FailMode};

/// The results a decision is counted under.
const RESULTS: [&str; 4] = ["allowed", "rejected", "shadow_rejected", "fail_open"];

thread_local! {
    /// Decision counters by policy label, per worker thread: a lookup in
    /// the registry hashes and allocates its labels on every call.
    static DECISIONS: std::cell::RefCell<std::collections::HashMap<String, [Option<metrics::Counter>; 4]>> =
        Default::default();
}

pub(super) fn record(parsed: &Parsed, result: &'static str) {
    let label = parsed.check.target.scope.label();
    let at = RESULTS.iter().position(|r| *r == result).unwrap_or(0);
    DECISIONS.with_borrow_mut(|cache| {
        if !cache.contains_key(label) {
            cache.insert(label.to_owned(), Default::default());
        }
        if let Some(slots) = cache.get_mut(label) {
            slots[at]
                .get_or_insert_with(|| {
                    metrics::counter!(
                        crate::metrics::RATELIMIT_DECISIONS,
                        "policy" => label.to_owned(),
                        "result" => RESULTS[at],
                    )
                })
                .increment(1);
        }
    });
}

pub(super) fn result_label(parsed: &Parsed, allowed: bool) -> &'static str {
    match (allowed, parsed.check.shadow) {
        (true, _) => "allowed",
        (false, true) => "shadow_rejected",
        (false, false) => "rejected",
    }
}

pub(super) fn answer(parsed: &Parsed, d: Decision) -> pb::CheckResponse {
    let limit = parsed.check.target.limit.limit;
    if !d.allowed && parsed.check.shadow {
        return pb::CheckResponse {
            allowed: true,
            limit,
            remaining: d.remaining,
            reset_after: Some(duration_out(d.reset_after_us)),
            retry_after: d.retry_after_us.map(duration_out),
            reason: pb::Reason::ShadowOverLimit as i32,
            reservation: String::new(),
        };
    }
    let reason = if d.allowed {
        pb::Reason::WithinLimit
    } else if parsed.requested_cost > limit {
        pb::Reason::CostExceedsLimit
    } else {
        pb::Reason::OverLimit
    };
    pb::CheckResponse {
        allowed: d.allowed,
        limit,
        remaining: d.remaining,
        reset_after: Some(duration_out(d.reset_after_us)),
        retry_after: d.retry_after_us.map(duration_out),
        reason: reason as i32,
        reservation: String::new(),
    }
}

/// A store failure: when the store is unavailable, limits that fail open
/// are allowed with `REASON_FAIL_OPEN`; any that fails closed makes the
/// call fail.
pub(super) fn failed(parsed: &[&Parsed], e: Error) -> Result<Vec<pb::CheckResponse>, Error> {
    match e {
        Error::Store(e)
            if e.is_unavailable()
                && parsed
                    .iter()
                    .all(|p| p.check.target.limit.fail_mode == FailMode::Open) =>
        {
            tracing::warn!(reason = %e, "store unavailable; failing open");
            for p in parsed {
                record(p, "fail_open");
            }
            Ok(parsed.iter().map(|p| fail_open(p)).collect())
        }
        e => Err(e),
    }
}

pub(super) fn fail_open(parsed: &Parsed) -> pb::CheckResponse {
    pb::CheckResponse {
        allowed: true,
        limit: parsed.check.target.limit.limit,
        remaining: 0,
        reset_after: Some(duration_out(0)),
        retry_after: None,
        reason: pb::Reason::FailOpen as i32,
        reservation: String::new(),
    }
}
