//! Limits bots need: all-or-nothing batches (every check consumes or none
//! does, also under concurrency, and on a cluster when the states share a
//! slot), `Report` of usage known afterwards (overdrawing the budget), and
//! shadow-mode policies.

use std::time::Duration;

use datalayer::proto::datalayer::ratelimit::v1::{
    self, CheckBatchRequest, CheckRequest, Reason, ReportRequest, check_request::LimitSource,
};
use datalayer::services::ratelimit::settings::{AlgorithmName, PolicySpec};
use tonic::Code;

use super::{check, each_algorithm, fixed_window, gcra, request};
use crate::harness::{Backend, TestApp, assert_bad_field, timed};
use crate::invariants::fresh;

/// The test app with `fw10` (10 per hour, fixed window) and `shadow2` (2
/// per hour, shadow mode).
async fn app(backend: Backend) -> TestApp {
    crate::harness::spawn_app_with(backend, |s| {
        s.redis.command_timeout = Duration::from_secs(1);
        let fixed = |limit, shadow_mode| PolicySpec {
            algorithm: Some(AlgorithmName::FixedWindow),
            limit: Some(limit),
            window: Some(Duration::from_secs(3600)),
            shadow_mode,
            ..Default::default()
        };
        s.ratelimit.policies.insert("fw10".into(), fixed(10, false));
        s.ratelimit
            .policies
            .insert("shadow2".into(), fixed(2, true));
    })
    .await
}

fn policy(key: &str, name: &str) -> CheckRequest {
    CheckRequest {
        reserve: false,
        key: key.into(),
        limit_source: Some(LimitSource::Policy(name.into())),
        cost: None,
    }
}

async fn batch(
    app: &TestApp,
    checks: Vec<CheckRequest>,
) -> Result<Vec<v1::CheckResponse>, tonic::Status> {
    app.ratelimit
        .clone()
        .check_batch(timed(CheckBatchRequest {
            checks,
            all_or_nothing: true,
        }))
        .await
        .map(|r| r.into_inner().results)
}

async fn remaining(app: &TestApp, req: CheckRequest) -> u64 {
    let mut look = req;
    look.cost = Some(0);
    app.ratelimit
        .clone()
        .check(timed(look))
        .await
        .expect("look")
        .into_inner()
        .remaining
}

/// A user's 10-per-hour policy and an inline 2-per-hour limit on one key:
/// two batches consume both, the third fits the policy but not the inline
/// limit, so the policy answers BATCH_REJECTED and keeps its 8.
async fn all_or_nothing_consumes_every_check_or_none(backend: Backend) {
    let app = app(backend).await;
    let key = fresh("user");
    let two = fixed_window(2, Duration::from_secs(3600));
    let both = || vec![policy(&key, "fw10"), request(&key, &two, None)];
    for _ in 0..2 {
        let r = batch(&app, both()).await.expect("batch");
        assert!(r.iter().all(|r| r.allowed), "{r:?}");
    }
    let r = batch(&app, both()).await.expect("batch");
    assert_eq!(
        (r[0].allowed, r[0].reason, r[1].allowed, r[1].reason),
        (
            false,
            Reason::BatchRejected as i32,
            false,
            Reason::OverLimit as i32
        ),
        "{r:?}"
    );
    assert_eq!(r[0].remaining, 8, "the policy consumed nothing");
    assert!(r[0].retry_after.is_none());
    assert_eq!(remaining(&app, policy(&key, "fw10")).await, 8);
}

/// 30 concurrent all-or-nothing batches against a limit of 5 and one of
/// 10 on one key: exactly 5 pass, and the 10-limit consumed exactly 5.
async fn all_or_nothing_under_concurrency(backend: Backend) {
    let app = app(backend).await;
    let key = fresh("conc");
    let five = fixed_window(5, Duration::from_secs(3600));
    let mut tasks = Vec::new();
    for _ in 0..30 {
        let app_client = app.ratelimit.clone();
        let checks = vec![request(&key, &five, None), policy(&key, "fw10")];
        tasks.push(tokio::spawn(async move {
            let mut c = app_client;
            let mut req = tonic::Request::new(CheckBatchRequest {
                checks,
                all_or_nothing: true,
            });
            req.set_timeout(Duration::from_secs(5));
            c.check_batch(req)
                .await
                .expect("batch")
                .into_inner()
                .results
        }));
    }
    let mut passed = 0;
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r[0].allowed, r[1].allowed, "both or neither: {r:?}");
        passed += u32::from(r[0].allowed);
    }
    assert_eq!(passed, 5);
    assert_eq!(remaining(&app, policy(&key, "fw10")).await, 5);
}

/// Different keys: atomic on one server; on a cluster, whose slots differ,
/// FAILED_PRECONDITION. Repeating a (key, limit) is INVALID_ARGUMENT.
async fn all_or_nothing_across_keys_and_duplicates(backend: Backend) {
    let app = app(backend).await;
    let (a, b) = (fresh("a"), fresh("b"));
    let result = batch(&app, vec![policy(&a, "fw10"), policy(&b, "fw10")]).await;
    match backend {
        Backend::Cluster => {
            let status = result.expect_err("different slots");
            assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
            assert!(
                status.message().contains("hash slot"),
                "{}",
                status.message()
            );
        }
        _ => assert!(result.expect("one server").iter().all(|r| r.allowed)),
    }
    let dup = app
        .ratelimit
        .clone()
        .check_batch(timed(CheckBatchRequest {
            checks: vec![policy(&a, "fw10"), policy(&a, "fw10")],
            all_or_nothing: true,
        }))
        .await;
    assert_bad_field(dup, "checks[1]");
}

/// A report consumes what it says, even past the limit; later checks wait
/// for the refill. Every algorithm.
async fn report_overdraws_and_later_checks_wait(backend: Backend) {
    let app = app(backend).await;
    for (name, limit) in each_algorithm(10, Duration::from_secs(3600)) {
        let key = fresh(name);
        let r = app
            .ratelimit
            .clone()
            .report(timed(ReportRequest {
                key: key.clone(),
                limit_source: Some(v1::report_request::LimitSource::Limit(limit)),
                cost: 25,
            }))
            .await
            .expect("report")
            .into_inner();
        assert!(r.overdrawn, "{name}: {r:?}");
        assert_eq!((r.limit, r.remaining), (10, 0), "{name}");
        let next = check(&app, &key, &limit, None).await;
        assert!(!next.allowed, "{name}: {next:?}");
        // Within the limit a report is not overdrawn and counts as spent.
        let other = fresh(name);
        let r = app
            .ratelimit
            .clone()
            .report(timed(ReportRequest {
                key: other.clone(),
                limit_source: Some(v1::report_request::LimitSource::Limit(limit)),
                cost: 4,
            }))
            .await
            .expect("report")
            .into_inner();
        assert!(!r.overdrawn, "{name}");
        assert_eq!(
            check(&app, &other, &limit, Some(0)).await.remaining,
            6,
            "{name}"
        );
    }
    // GCRA: 25 used of 10 per 10 s waits out the 15 over the limit.
    let key = fresh("gcra-wait");
    let ten = gcra(10, Duration::from_secs(10));
    app.ratelimit
        .clone()
        .report(timed(ReportRequest {
            key: key.clone(),
            limit_source: Some(v1::report_request::LimitSource::Limit(ten)),
            cost: 25,
        }))
        .await
        .expect("report");
    let wait = super::to_duration(&check(&app, &key, &ten, None).await.retry_after);
    assert!(
        wait > Duration::from_millis(15_500) && wait <= Duration::from_secs(16),
        "{wait:?}"
    );
    for cost in [0, 1001] {
        assert_bad_field(
            app.ratelimit
                .clone()
                .report(timed(ReportRequest {
                    key: key.clone(),
                    limit_source: Some(v1::report_request::LimitSource::Policy("fw10".into())),
                    cost,
                }))
                .await,
            "cost",
        );
    }
}

/// A shadow-mode policy decides and counts but answers allowed; in an
/// all-or-nothing batch its rejection holds back no other check.
async fn shadow_mode_answers_allowed(backend: Backend) {
    let app = app(backend).await;
    let key = fresh("shadow");
    let mut reasons = Vec::new();
    for _ in 0..4 {
        let r = app
            .ratelimit
            .clone()
            .check(timed(policy(&key, "shadow2")))
            .await
            .unwrap()
            .into_inner();
        assert!(r.allowed);
        reasons.push(r.reason);
    }
    let within = Reason::WithinLimit as i32;
    let shadow = Reason::ShadowOverLimit as i32;
    assert_eq!(reasons, [within, within, shadow, shadow]);
    let r = batch(&app, vec![policy(&key, "shadow2"), policy(&key, "fw10")])
        .await
        .unwrap();
    assert_eq!((r[0].allowed, r[0].reason), (true, shadow));
    assert_eq!((r[1].allowed, r[1].reason), (true, within));
    assert_eq!(remaining(&app, policy(&key, "fw10")).await, 9);
}

conformance!(
    all_or_nothing_consumes_every_check_or_none,
    all_or_nothing_under_concurrency,
    all_or_nothing_across_keys_and_duplicates,
    report_overdraws_and_later_checks_wait,
    shadow_mode_answers_allowed,
);
