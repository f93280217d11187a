//! RateLimitService conformance: every case runs against the memory store
//! and against a real `redis-server`, through the gRPC surface.

mod envoy;
mod flood;
mod limits;
mod redis_only;
mod reservations;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::harness::{Backend, TestApp, assert_bad_field, spawn_app};
use datalayer::proto::datalayer::ratelimit::v1::{
    self, CheckBatchRequest, CheckRequest, CheckResponse, FixedWindow, Gcra, Limit, Reason,
    ResetRequest, SlidingWindow, TokenBucket, check_request::LimitSource, limit::Algorithm,
};

fn dur(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn to_duration(d: &Option<prost_types::Duration>) -> Duration {
    let d = d.as_ref().expect("duration set");
    Duration::new(d.seconds as u64, d.nanos as u32)
}

fn gcra(limit: u64, period: Duration) -> Limit {
    Limit {
        algorithm: Some(Algorithm::Gcra(Gcra {
            limit,
            period: Some(dur(period)),
        })),
        fail_mode: 0,
    }
}

fn token_bucket(capacity: u64, refill_amount: u64, refill_interval: Duration) -> Limit {
    Limit {
        algorithm: Some(Algorithm::TokenBucket(TokenBucket {
            capacity,
            refill_amount,
            refill_interval: Some(dur(refill_interval)),
        })),
        fail_mode: 0,
    }
}

fn fixed_window(limit: u64, window: Duration) -> Limit {
    Limit {
        algorithm: Some(Algorithm::FixedWindow(FixedWindow {
            limit,
            window: Some(dur(window)),
        })),
        fail_mode: 0,
    }
}

fn sliding_window(limit: u64, window: Duration) -> Limit {
    Limit {
        algorithm: Some(Algorithm::SlidingWindow(SlidingWindow {
            limit,
            window: Some(dur(window)),
        })),
        fail_mode: 0,
    }
}

/// `limit` units per `period`, in each algorithm (the token bucket refills
/// `limit` tokens every `period`).
fn each_algorithm(limit: u64, period: Duration) -> Vec<(&'static str, Limit)> {
    vec![
        ("gcra", gcra(limit, period)),
        ("token_bucket", token_bucket(limit, limit, period)),
        ("fixed_window", fixed_window(limit, period)),
        ("sliding_window", sliding_window(limit, period)),
    ]
}

fn request(key: &str, limit: &Limit, cost: Option<u64>) -> CheckRequest {
    CheckRequest {
        reserve: false,
        key: key.to_owned(),
        limit_source: Some(LimitSource::Limit(*limit)),
        cost,
    }
}

async fn check(app: &TestApp, key: &str, limit: &Limit, cost: Option<u64>) -> CheckResponse {
    app.ratelimit
        .clone()
        .check(request(key, limit, cost))
        .await
        .expect("check succeeds")
        .into_inner()
}

/// Windows are aligned to the clock: sleep past a boundary that is about to
/// come, so a burst cannot straddle two windows by chance.
async fn away_from_window_edge(window: Duration, needed: Duration) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let into = Duration::from_micros((now.as_micros() % window.as_micros()) as u64);
    if window - into < needed {
        tokio::time::sleep(window - into + Duration::from_millis(50)).await;
    }
}

/// 200 concurrent callers on one key: exactly the limit is admitted.
async fn concurrent_callers_never_exceed_the_limit(backend: Backend) {
    let app = spawn_app(backend).await;
    let window = Duration::from_secs(3600);
    away_from_window_edge(window, Duration::from_secs(60)).await;
    for (name, limit) in each_algorithm(10, window) {
        let key = format!("concurrent-{name}");
        let calls = (0..200).map(|_| {
            let mut client = app.ratelimit.clone();
            let req = request(&key, &limit, None);
            tokio::spawn(async move { client.check(req).await })
        });
        let mut admitted = 0;
        for call in futures::future::join_all(calls).await {
            let answer = call.expect("task").expect("check succeeds").into_inner();
            if answer.allowed {
                admitted += 1;
            } else {
                assert_eq!(answer.reason, Reason::OverLimit as i32, "{name}");
                assert!(answer.retry_after.is_some(), "{name}: retry_after");
            }
        }
        assert_eq!(admitted, 10, "{name}: 10 per hour admits exactly 10");
    }
}

/// After a rejection, waiting `retry_after` is enough, and not waiting is not.
async fn retry_after_is_honoured(backend: Backend) {
    let app = spawn_app(backend).await;
    let period = Duration::from_millis(1200);
    for (name, limit) in each_algorithm(2, period) {
        let key = format!("retry-{name}");
        let mut rejected = None;
        for _ in 0..10 {
            let answer = check(&app, &key, &limit, None).await;
            if !answer.allowed {
                rejected = Some(answer);
                break;
            }
        }
        let rejected = rejected.unwrap_or_else(|| panic!("{name}: never rejected"));
        let retry = to_duration(&rejected.retry_after);
        assert!(
            retry <= period * 2,
            "{name}: retry_after {retry:?} within two periods"
        );
        if retry > Duration::from_millis(200) {
            assert!(
                !check(&app, &key, &limit, None).await.allowed,
                "{name}: still rejected before retry_after"
            );
        }
        tokio::time::sleep(retry + Duration::from_millis(30)).await;
        assert!(
            check(&app, &key, &limit, None).await.allowed,
            "{name}: allowed after retry_after ({retry:?})"
        );
    }
}

/// A fixed window starts from zero at its boundary.
async fn fixed_window_resets_at_the_boundary(backend: Backend) {
    let app = spawn_app(backend).await;
    let window = Duration::from_millis(500);
    let limit = fixed_window(3, window);
    away_from_window_edge(window, Duration::from_millis(200)).await;
    let mut admitted = 0;
    let mut last = None;
    for _ in 0..6 {
        let answer = check(&app, "edge", &limit, None).await;
        admitted += u32::from(answer.allowed);
        last = Some(answer);
    }
    assert_eq!(admitted, 3);
    let last = last.unwrap();
    let until_boundary = to_duration(&last.retry_after);
    assert_eq!(until_boundary, to_duration(&last.reset_after));
    assert!(until_boundary <= window);
    tokio::time::sleep(until_boundary + Duration::from_millis(20)).await;
    let answer = check(&app, "edge", &limit, None).await;
    assert!(answer.allowed);
    assert_eq!(answer.remaining, 2, "a new window starts from zero");
}

/// Just after a boundary, a sliding window still counts most of the previous
/// window, where a fixed window would admit a whole new limit.
async fn sliding_window_weighs_the_previous_window(backend: Backend) {
    let app = spawn_app(backend).await;
    let window = Duration::from_secs(2);
    let limit = sliding_window(10, window);
    away_from_window_edge(window, Duration::from_millis(1500)).await;
    for _ in 0..10 {
        assert!(check(&app, "slide", &limit, None).await.allowed);
    }
    let full = check(&app, "slide", &limit, Some(0)).await;
    assert_eq!(full.remaining, 0);
    // Into the next window by about a tenth.
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let into = Duration::from_micros((now.as_micros() % window.as_micros()) as u64);
    tokio::time::sleep(window - into + window / 10).await;
    let mut admitted = 0;
    for _ in 0..10 {
        admitted += u32::from(check(&app, "slide", &limit, None).await.allowed);
    }
    assert!(
        (1..=4).contains(&admitted),
        "about a tenth of the budget is back, got {admitted}"
    );
}

/// A token bucket refills `refill_amount` per interval, up to its capacity.
async fn token_bucket_refills(backend: Backend) {
    let app = spawn_app(backend).await;
    let limit = token_bucket(4, 2, Duration::from_millis(400));
    for _ in 0..4 {
        assert!(check(&app, "refill", &limit, None).await.allowed);
    }
    let empty = check(&app, "refill", &limit, None).await;
    assert!(!empty.allowed);
    tokio::time::sleep(to_duration(&empty.retry_after) + Duration::from_millis(20)).await;
    let after = check(&app, "refill", &limit, Some(0)).await;
    assert_eq!(after.remaining, 2, "one interval refills two tokens");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let full = check(&app, "refill", &limit, Some(0)).await;
    assert_eq!(full.remaining, 4, "never above capacity");
}

/// Cost 0 reports without consuming.
async fn cost_zero_looks_without_consuming(backend: Backend) {
    let app = spawn_app(backend).await;
    for (name, limit) in each_algorithm(10, Duration::from_secs(3600)) {
        let key = format!("peek-{name}");
        for _ in 0..3 {
            assert!(check(&app, &key, &limit, None).await.allowed);
        }
        for _ in 0..5 {
            let peek = check(&app, &key, &limit, Some(0)).await;
            assert!(peek.allowed, "{name}");
            assert_eq!(peek.remaining, 7, "{name}: cost 0 consumes nothing");
            assert_eq!(peek.limit, 10);
            assert_eq!(peek.reason, Reason::WithinLimit as i32);
        }
        // A key never used is reported full, and cost 0 creates nothing.
        let fresh = check(&app, &format!("fresh-{name}"), &limit, Some(0)).await;
        assert_eq!(fresh.remaining, 10, "{name}");
        assert_eq!(to_duration(&fresh.reset_after), Duration::ZERO, "{name}");
    }
}

/// A cost above the limit is rejected for good, and changes nothing.
async fn cost_above_the_limit_never_fits(backend: Backend) {
    let app = spawn_app(backend).await;
    for (name, limit) in each_algorithm(10, Duration::from_secs(3600)) {
        let key = format!("huge-{name}");
        assert!(check(&app, &key, &limit, Some(4)).await.allowed);
        for cost in [11, 1_000_000, u64::MAX] {
            let answer = check(&app, &key, &limit, Some(cost)).await;
            assert!(!answer.allowed, "{name}");
            assert_eq!(answer.reason, Reason::CostExceedsLimit as i32, "{name}");
            assert!(answer.retry_after.is_none(), "{name}: can never fit");
            assert_eq!(answer.remaining, 6, "{name}");
        }
        assert_eq!(
            check(&app, &key, &limit, Some(0)).await.remaining,
            6,
            "{name}"
        );
    }
}

/// A rejected call consumes nothing: a smaller cost still fits after it.
async fn a_rejected_call_consumes_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    for (name, limit) in each_algorithm(5, Duration::from_secs(3600)) {
        let key = format!("reject-{name}");
        assert!(check(&app, &key, &limit, Some(4)).await.allowed, "{name}");
        for _ in 0..3 {
            let answer = check(&app, &key, &limit, Some(3)).await;
            assert!(!answer.allowed, "{name}");
            assert_eq!(answer.reason, Reason::OverLimit as i32, "{name}");
            assert_eq!(answer.remaining, 1, "{name}");
        }
        let last = check(&app, &key, &limit, Some(1)).await;
        assert!(last.allowed, "{name}: the one unit left is still there");
        assert_eq!(last.remaining, 0, "{name}");
    }
}

/// GCRA spaces requests evenly: remaining, reset and retry are exact.
async fn gcra_reports_exact_times(backend: Backend) {
    let app = spawn_app(backend).await;
    let limit = gcra(10, Duration::from_secs(100));
    let first = check(&app, "gcra-times", &limit, Some(3)).await;
    assert!(first.allowed);
    assert_eq!(first.remaining, 7);
    assert_eq!(to_duration(&first.reset_after), Duration::from_secs(30));
    let all = check(&app, "gcra-times", &limit, Some(7)).await;
    assert!(all.allowed);
    assert_eq!(all.remaining, 0);
    let over = check(&app, "gcra-times", &limit, None).await;
    assert!(!over.allowed);
    let retry = to_duration(&over.retry_after);
    assert!(
        retry > Duration::from_secs(9) && retry <= Duration::from_secs(10),
        "one emission interval (10 s) minus the time spent, got {retry:?}"
    );
}

async fn reset_forgets_the_key(backend: Backend) {
    let app = spawn_app(backend).await;
    for (name, limit) in each_algorithm(3, Duration::from_secs(3600)) {
        let key = format!("reset-{name}");
        for _ in 0..3 {
            assert!(check(&app, &key, &limit, None).await.allowed);
        }
        assert!(!check(&app, &key, &limit, None).await.allowed, "{name}");
        app.ratelimit
            .clone()
            .reset(ResetRequest {
                key: key.clone(),
                limit_source: Some(v1::reset_request::LimitSource::Limit(limit)),
            })
            .await
            .expect("reset succeeds");
        let answer = check(&app, &key, &limit, None).await;
        assert!(answer.allowed, "{name}");
        assert_eq!(answer.remaining, 2, "{name}: full budget after reset");
    }
}

/// A configured policy applies by name; policies and algorithms on one
/// caller key keep separate state.
async fn policies_apply_by_name_and_keep_separate_state(backend: Backend) {
    let app = spawn_app(backend).await;
    let by_policy = |policy: &str| CheckRequest {
        reserve: false,
        key: "user:7".into(),
        limit_source: Some(LimitSource::Policy(policy.into())),
        cost: None,
    };
    let mut admitted = 0;
    for _ in 0..8 {
        let answer = app
            .ratelimit
            .clone()
            .check(by_policy("auth"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.limit, 5);
        admitted += u32::from(answer.allowed);
    }
    assert_eq!(admitted, 5, "policy auth: 5 per minute");
    let other = app
        .ratelimit
        .clone()
        .check(by_policy("closed"))
        .await
        .unwrap()
        .into_inner();
    assert!(
        other.allowed,
        "another policy on the same key is independent"
    );
    assert_eq!(other.remaining, 99);
    let inline = check(
        &app,
        "user:7",
        &sliding_window(5, Duration::from_secs(60)),
        None,
    )
    .await;
    assert!(inline.allowed, "an inline limit is independent of policies");
}

/// CheckBatch answers in order, each check independent.
async fn batch_answers_in_order(backend: Backend) {
    let app = spawn_app(backend).await;
    let hour = Duration::from_secs(3600);
    let checks = vec![
        request("batch-a", &gcra(1, hour), None),
        request("batch-a", &gcra(1, hour), None),
        request("batch-b", &token_bucket(2, 1, hour), Some(2)),
        request("batch-c", &fixed_window(1, hour), Some(5)),
        request("batch-d", &sliding_window(3, hour), Some(0)),
    ];
    let results = app
        .ratelimit
        .clone()
        .check_batch(CheckBatchRequest {
            checks,
            all_or_nothing: false,
        })
        .await
        .expect("batch succeeds")
        .into_inner()
        .results;
    let summary: Vec<(bool, u64, i32)> = results
        .iter()
        .map(|r| (r.allowed, r.remaining, r.reason))
        .collect();
    assert_eq!(
        summary,
        vec![
            (true, 0, Reason::WithinLimit as i32),
            (false, 0, Reason::OverLimit as i32),
            (true, 0, Reason::WithinLimit as i32),
            (false, 1, Reason::CostExceedsLimit as i32),
            (true, 3, Reason::WithinLimit as i32),
        ]
    );
}

/// Each kind of bad input is INVALID_ARGUMENT naming the field.
async fn bad_input_names_the_field(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.ratelimit.clone();
    let minute = Duration::from_secs(60);
    let ok = gcra(5, minute);
    // Every bad field of one request is reported, not just the first.
    let both = client
        .check(request("", &gcra(5, Duration::ZERO), None))
        .await
        .expect_err("two bad fields");
    assert_eq!(
        crate::harness::bad_fields(&both),
        vec!["key", "limit.gcra.period"]
    );
    let cases: Vec<(CheckRequest, &str)> = vec![
        (request("", &ok, None), "key"),
        (request(&"k".repeat(513), &ok, None), "key"),
        (request("k", &gcra(0, minute), None), "limit.gcra.limit"),
        (
            request("k", &gcra(5, Duration::ZERO), None),
            "limit.gcra.period",
        ),
        (
            request("k", &gcra(5_000_000_000, minute), None),
            "limit.gcra.limit",
        ),
        (
            request("k", &fixed_window(5, Duration::ZERO), None),
            "limit.fixed_window.window",
        ),
        (
            request("k", &sliding_window(0, minute), None),
            "limit.sliding_window.limit",
        ),
        (
            request("k", &token_bucket(5, 0, minute), None),
            "limit.token_bucket.refill_amount",
        ),
        (
            request("k", &token_bucket(5, 6, minute), None),
            "limit.token_bucket.refill_amount",
        ),
        (
            request("k", &gcra(5, Duration::from_secs(366 * 24 * 3600)), None),
            "limit.gcra.period",
        ),
        (
            request(
                "k",
                &Limit {
                    algorithm: None,
                    fail_mode: 0,
                },
                None,
            ),
            "limit.algorithm",
        ),
        (
            request(
                "k",
                &Limit {
                    algorithm: ok.algorithm,
                    fail_mode: 99,
                },
                None,
            ),
            "limit.fail_mode",
        ),
        (
            CheckRequest {
                reserve: false,
                key: "k".into(),
                limit_source: None,
                cost: None,
            },
            "limit",
        ),
        (
            CheckRequest {
                reserve: false,
                key: "k".into(),
                limit_source: Some(LimitSource::Policy("nope".into())),
                cost: None,
            },
            "policy",
        ),
    ];
    for (req, field) in cases {
        assert_bad_field(client.check(req).await, field);
    }
    // A negative duration.
    let mut negative = gcra(5, minute);
    if let Some(Algorithm::Gcra(g)) = &mut negative.algorithm {
        g.period = Some(prost_types::Duration {
            seconds: -1,
            nanos: 0,
        });
    }
    assert_bad_field(
        client.check(request("k", &negative, None)).await,
        "limit.gcra.period",
    );

    // Batches: too long, empty, and a bad item named by index.
    let too_long = CheckBatchRequest {
        checks: (0..101).map(|_| request("k", &ok, None)).collect(),
        all_or_nothing: false,
    };
    assert_bad_field(client.check_batch(too_long).await, "checks");
    assert_bad_field(
        client
            .check_batch(CheckBatchRequest {
                checks: vec![],
                all_or_nothing: false,
            })
            .await,
        "checks",
    );
    let bad_item = CheckBatchRequest {
        checks: vec![request("k", &ok, None), request("", &ok, None)],
        all_or_nothing: false,
    };
    assert_bad_field(client.check_batch(bad_item).await, "checks[1].key");

    // Reset validates the same way.
    assert_bad_field(
        client
            .reset(ResetRequest {
                key: String::new(),
                limit_source: Some(v1::reset_request::LimitSource::Policy("auth".into())),
            })
            .await,
        "key",
    );
}

conformance!(
    concurrent_callers_never_exceed_the_limit,
    retry_after_is_honoured,
    fixed_window_resets_at_the_boundary,
    sliding_window_weighs_the_previous_window,
    token_bucket_refills,
    cost_zero_looks_without_consuming,
    cost_above_the_limit_never_fits,
    a_rejected_call_consumes_nothing,
    gcra_reports_exact_times,
    reset_forgets_the_key,
    policies_apply_by_name_and_keep_separate_state,
    batch_answers_in_order,
    bad_input_names_the_field,
);

/// Every RPC, every algorithm, inline and by policy (see `invariants`).
pub fn workload(app: &TestApp) -> futures::future::BoxFuture<'_, Result<(), tonic::Status>> {
    Box::pin(async move {
        use crate::harness::timed;
        let key = crate::invariants::fresh("w");
        let mut client = app.ratelimit.clone();
        for (_, limit) in each_algorithm(5, Duration::from_secs(60)) {
            client.check(timed(request(&key, &limit, None))).await?;
        }
        let by_policy = CheckRequest {
            reserve: false,
            key: key.clone(),
            limit_source: Some(LimitSource::Policy("closed".into())),
            cost: None,
        };
        client
            .check_batch(timed(CheckBatchRequest {
                checks: vec![
                    by_policy.clone(),
                    request(&key, &gcra(3, Duration::from_secs(9)), None),
                ],
                all_or_nothing: false,
            }))
            .await?;
        // One key under two limits: one slot, so atomic on a cluster too.
        client
            .check_batch(timed(CheckBatchRequest {
                checks: vec![
                    by_policy.clone(),
                    request(&key, &gcra(3, Duration::from_secs(9)), None),
                ],
                all_or_nothing: true,
            }))
            .await?;
        client
            .report(timed(v1::ReportRequest {
                key: key.clone(),
                limit_source: Some(v1::report_request::LimitSource::Policy("closed".into())),
                cost: 2,
            }))
            .await?;
        client
            .reset(timed(ResetRequest {
                key: crate::invariants::fresh("gone"),
                limit_source: Some(v1::reset_request::LimitSource::Policy("closed".into())),
            }))
            .await?;
        Ok(())
    })
}
