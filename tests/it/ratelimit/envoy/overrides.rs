//! Limits Envoy sends with a descriptor (`RateLimitDescriptor.limit`, from
//! Envoy's `limit` action): they replace the file's rule, count apart from
//! it, are never in shadow mode, apply in configured domains only, and bad
//! ones are INVALID_ARGUMENT naming the field.

use datalayer::proto::envoy::extensions::common::ratelimit::v3::{
    RateLimitDescriptor, rate_limit_descriptor::RateLimitOverride,
};
use datalayer::proto::envoy::service::ratelimit::v3::RateLimitRequest;

use super::{OK, OVER, codes, d, envoy};
use crate::harness::{Backend, bad_fields, timed};
use crate::invariants::fresh;

/// envoy.type.v3.RateLimitUnit.
const MINUTE: i32 = 2;
const HOUR: i32 = 3;

fn limited(entries: &[(&str, &str)], requests_per_unit: u32, unit: i32) -> RateLimitDescriptor {
    RateLimitDescriptor {
        limit: Some(RateLimitOverride {
            requests_per_unit,
            unit,
        }),
        ..d(entries)
    }
}

/// The override's limit decides, with its own counter; the file's rule
/// for the same entries keeps counting on its own.
async fn envoys_limit_replaces_the_files(backend: Backend) {
    let e = envoy(backend, |_| {}).await;
    let user = fresh("u");
    let first = e
        .ask(vec![limited(&[("user_id", &user)], 1, HOUR)], 0)
        .await;
    assert_eq!(first.overall_code, OK);
    let s = &first.statuses[0];
    let current = s.current_limit.as_ref().expect("the override is told");
    assert_eq!((current.requests_per_unit, current.unit), (1, HOUR));
    assert_eq!(s.limit_remaining, 0);
    assert!(s.duration_until_reset.as_ref().unwrap().seconds <= 3600);
    let second = e
        .ask(vec![limited(&[("user_id", &user)], 1, HOUR)], 0)
        .await;
    assert_eq!(second.overall_code, OVER);
    // The file's per-user rule (3 a minute) has counted nothing.
    let file = e.ask(vec![d(&[("user_id", &user)])], 0).await;
    assert_eq!(
        (file.overall_code, file.statuses[0].limit_remaining),
        (OK, 2)
    );
    // Another override of the same entries has its own counter.
    let wider = e
        .ask(vec![limited(&[("user_id", &user)], 5, MINUTE)], 0)
        .await;
    assert_eq!(
        (wider.overall_code, wider.statuses[0].limit_remaining),
        (OK, 4)
    );
    // Entries that no rule of the file matches are limited too.
    let free = fresh("t");
    let limited_twice = vec![limited(&[("tenant", &free)], 1, MINUTE); 2];
    let r = e.ask(limited_twice, 0).await;
    assert_eq!((codes(&r), r.overall_code), (vec![OK, OVER], OVER));
    // Zero requests per unit: always over.
    let r = e
        .ask(vec![limited(&[("tenant", &fresh("t"))], 0, MINUTE)], 0)
        .await;
    assert_eq!(r.overall_code, OVER);
}

/// A shadow-mode rule of the file does not make the override shadow; an
/// unknown domain ignores overrides (nothing is configured there).
async fn overrides_are_never_shadow_and_need_a_domain(backend: Backend) {
    let e = envoy(backend, |_| {}).await;
    // The domain is fresh, so is the counter.
    let beta = || limited(&[("path", "/beta/x")], 1, HOUR);
    assert_eq!(e.ask(vec![beta()], 0).await.overall_code, OK);
    let over = e.ask(vec![beta()], 0).await;
    assert_eq!((over.overall_code, codes(&over)), (OVER, vec![OVER]));
    let unknown = e
        .client()
        .should_rate_limit(timed(RateLimitRequest {
            domain: fresh("nobody"),
            descriptors: vec![beta(), beta()],
            hits_addend: 0,
        }))
        .await
        .expect("ShouldRateLimit answers")
        .into_inner();
    assert_eq!((unknown.overall_code, codes(&unknown)), (OK, vec![OK, OK]));
    assert!(unknown.statuses[0].current_limit.is_none());
}

/// Units outside SECOND..MONTH (UNKNOWN, YEAR, garbage) and limits above
/// the service's bound are named, every one in the same answer.
async fn bad_overrides_name_the_field(backend: Backend) {
    let e = envoy(backend, |_| {}).await;
    let status = e
        .client()
        .should_rate_limit(timed(RateLimitRequest {
            domain: e.domain.clone(),
            descriptors: vec![
                limited(&[("user_id", "a")], 1, 0),
                limited(&[("user_id", "b")], 1, 6),
                limited(&[("user_id", "c")], u32::MAX, MINUTE),
                limited(&[("user_id", "d")], 1, MINUTE),
            ],
            hits_addend: 0,
        }))
        .await
        .expect_err("bad overrides are refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert_eq!(
        bad_fields(&status),
        [
            "descriptors[0].limit.unit",
            "descriptors[1].limit.unit",
            "descriptors[2].limit.requests_per_unit",
        ]
    );
}

crate::conformance!(
    envoys_limit_replaces_the_files,
    overrides_are_never_shadow_and_need_a_domain,
    bad_overrides_name_the_field,
);
