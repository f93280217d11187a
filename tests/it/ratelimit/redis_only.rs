//! Redis-only behaviour of RateLimitService: key TTLs, scripts reloaded
//! after a flush, and the failure paths — Redis killed, Redis frozen — with
//! recovery once it is back.

use std::time::Duration;

use crate::harness::{Backend, TestApp, spawn_app};
use datalayer::proto::datalayer::ratelimit::v1::{
    CheckBatchRequest, CheckRequest, CheckResponse, Gcra, Limit, Reason, SettleRequest,
    SettleResult, check_request::LimitSource, limit::Algorithm, settle_request,
};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_types::StatusExt;

fn policy(name: &str) -> CheckRequest {
    CheckRequest {
        reserve: false,
        key: "bot-1".into(),
        limit_source: Some(LimitSource::Policy(name.into())),
        cost: None,
    }
}

fn inline(key: &str, algorithm: Algorithm, cost: Option<u64>) -> CheckRequest {
    CheckRequest {
        reserve: false,
        key: key.into(),
        limit_source: Some(LimitSource::Limit(Limit {
            algorithm: Some(algorithm),
            fail_mode: 0,
        })),
        cost,
    }
}

fn minute() -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: 60,
        nanos: 0,
    })
}

fn every_algorithm() -> Vec<Algorithm> {
    use datalayer::proto::datalayer::ratelimit::v1::{FixedWindow, SlidingWindow, TokenBucket};
    vec![
        Algorithm::Gcra(Gcra {
            limit: 10,
            period: minute(),
        }),
        Algorithm::TokenBucket(TokenBucket {
            capacity: 10,
            refill_amount: 1,
            refill_interval: Some(prost_types::Duration {
                seconds: 6,
                nanos: 0,
            }),
        }),
        Algorithm::FixedWindow(FixedWindow {
            limit: 10,
            window: minute(),
        }),
        Algorithm::SlidingWindow(SlidingWindow {
            limit: 10,
            window: minute(),
        }),
    ]
}

async fn call(
    app: &TestApp,
    req: CheckRequest,
    timeout: Option<Duration>,
) -> Result<CheckResponse, tonic::Status> {
    let mut request = tonic::Request::new(req);
    if let Some(t) = timeout {
        request.set_timeout(t);
    }
    app.ratelimit
        .clone()
        .check(request)
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn every_key_written_has_a_bounded_ttl() {
    let app = spawn_app(Backend::Redis).await;
    for (i, algorithm) in every_algorithm().into_iter().enumerate() {
        let key = format!("ttl-{i}");
        call(&app, inline(&key, algorithm, Some(3)), None)
            .await
            .unwrap();
        // Huge and zero costs write nothing.
        call(
            &app,
            inline(&format!("{key}-huge"), algorithm, Some(u64::MAX)),
            None,
        )
        .await
        .unwrap();
        call(
            &app,
            inline(&format!("{key}-peek"), algorithm, Some(0)),
            None,
        )
        .await
        .unwrap();
    }
    let written = app.keys();
    assert_eq!(
        written.len(),
        4,
        "one key per algorithm, none for huge or zero costs: {written:?}"
    );
    for key in written {
        let layout = format!("dl:{}:rl:{{ttl-", app.namespace);
        assert!(key.starts_with(&layout), "key layout: {key}");
        let ttl = app.redis().pttl(&key);
        // At most two windows (sliding window keeps the previous one).
        assert!(ttl > 0 && ttl <= 120_000, "{key} has TTL {ttl} ms");
    }
}

#[tokio::test]
async fn scripts_are_reloaded_after_a_flush_and_never_applied_twice() {
    let app = spawn_app(Backend::OwnRedis).await;
    let gcra = every_algorithm().remove(0);
    let first = call(&app, inline("flush", gcra, None), None).await.unwrap();
    assert_eq!(first.remaining, 9);
    assert!(app.redis().cmd(&["SCRIPT", "FLUSH"]).starts_with("+OK"));
    let second = call(&app, inline("flush", gcra, None), None).await.unwrap();
    assert!(second.allowed);
    assert_eq!(second.remaining, 8, "applied exactly once after NOSCRIPT");
}

#[tokio::test]
async fn redis_down_fails_by_policy_and_recovers_by_itself() {
    let mut app = spawn_app(Backend::OwnRedis).await;
    app.wait_for_health(ServingStatus::Serving).await;
    assert!(call(&app, policy("closed"), None).await.unwrap().allowed);
    let reserving = |name: &str| CheckRequest {
        reserve: true,
        ..policy(name)
    };
    let held = call(&app, reserving("closed"), None).await.unwrap();
    assert!(!held.reservation.is_empty(), "{held:?}");
    let settler = app.ratelimit.clone();
    let settle = |reservation: &str| {
        let mut request = tonic::Request::new(SettleRequest {
            key: "bot-1".into(),
            limit_source: Some(settle_request::LimitSource::Policy("closed".into())),
            reservation: reservation.to_owned(),
            cost: 0,
        });
        request.set_timeout(Duration::from_millis(500));
        let mut client = settler.clone();
        async move { client.settle(request).await.map(|r| r.into_inner()) }
    };

    app.own_redis().kill();
    app.wait_for_health(ServingStatus::NotServing).await;
    assert_eq!(
        app.health_status("datalayer.ratelimit.v1.RateLimitService")
            .await,
        ServingStatus::NotServing
    );

    let closed = call(&app, policy("closed"), Some(Duration::from_millis(500)))
        .await
        .expect_err("closed policy fails");
    assert_eq!(closed.code(), Code::Unavailable, "{closed:?}");
    // A check consumes budget: it says "retry" only when Redis never got
    // it (connection refused); a connection lost mid-call may have run it.
    assert!(
        closed.get_details_retry_info().is_some()
            || closed.message().contains("may have been applied"),
        "UNAVAILABLE says whether a retry is safe: {closed:?}"
    );

    let open = call(&app, policy("open"), Some(Duration::from_millis(500)))
        .await
        .expect("open policy answers");
    assert!(open.allowed);
    assert_eq!(open.reason, Reason::FailOpen as i32);
    // Reserving checks fail the same way, and an open one holds nothing.
    let closed = call(&app, reserving("closed"), Some(Duration::from_millis(500)))
        .await
        .expect_err("closed reserving check fails");
    assert_eq!(closed.code(), Code::Unavailable, "{closed:?}");
    let open = call(&app, reserving("open"), Some(Duration::from_millis(500)))
        .await
        .expect("open reserving check answers");
    assert_eq!(open.reason, Reason::FailOpen as i32);
    assert!(open.reservation.is_empty(), "{open:?}");
    // A settle never fails open: it would give back blind.
    let unsettled = settle(&held.reservation).await.expect_err("settle fails");
    assert_eq!(unsettled.code(), Code::Unavailable, "{unsettled:?}");

    // A batch fails open only when every check in it does.
    let mut client = app.ratelimit.clone();
    let all_open = client
        .check_batch(CheckBatchRequest {
            checks: vec![policy("open"), policy("open")],
            all_or_nothing: false,
        })
        .await
        .expect("all-open batch answers")
        .into_inner();
    assert!(
        all_open
            .results
            .iter()
            .all(|r| r.reason == Reason::FailOpen as i32)
    );
    let mixed = client
        .check_batch(CheckBatchRequest {
            checks: vec![policy("open"), policy("closed")],
            all_or_nothing: false,
        })
        .await
        .expect_err("a closed check fails the batch");
    assert_eq!(mixed.code(), Code::Unavailable);

    app.own_redis().restart();
    app.wait_for_health(ServingStatus::Serving).await;
    assert_eq!(
        app.health_status("datalayer.ratelimit.v1.RateLimitService")
            .await,
        ServingStatus::Serving
    );
    let back = call(&app, policy("closed"), None).await.expect("recovered");
    assert!(back.allowed);
    assert_eq!(back.reason, Reason::WithinLimit as i32);
    // Redis restarted empty: the budget starts over, and the reservation
    // made before is gone with it.
    assert_eq!(back.remaining, 99);
    let late = settle(&held.reservation)
        .await
        .expect("settle after recovery");
    assert_eq!(late.result, SettleResult::Expired as i32, "{late:?}");
}

#[tokio::test]
async fn a_frozen_redis_is_answered_within_the_deadline() {
    let app = spawn_app(Backend::OwnRedis).await;
    assert!(call(&app, policy("closed"), None).await.unwrap().allowed);

    app.redis().pause();
    // If the service waited past the deadline, the client would see
    // DEADLINE_EXCEEDED; UNAVAILABLE and FAIL_OPEN prove it answered in time.
    let deadline = Some(Duration::from_millis(300));
    let closed = call(&app, policy("closed"), deadline)
        .await
        .expect_err("closed policy fails");
    assert_eq!(closed.code(), Code::Unavailable, "{closed:?}");
    let open = call(&app, policy("open"), deadline)
        .await
        .expect("open answers");
    assert_eq!(open.reason, Reason::FailOpen as i32);
    // Without a client deadline, the configured default (1 s) applies.
    let default = call(&app, policy("closed"), None)
        .await
        .expect_err("closed policy fails");
    assert_eq!(default.code(), Code::Unavailable);
    app.wait_for_health(ServingStatus::NotServing).await;

    app.redis().resume();
    app.wait_for_health(ServingStatus::Serving).await;
    let back = call(&app, policy("closed"), None).await.expect("recovered");
    assert!(back.allowed);
    assert_eq!(back.reason, Reason::WithinLimit as i32);
}

#[tokio::test]
async fn concurrent_calls_survive_a_redis_restart() {
    let mut app = spawn_app(Backend::OwnRedis).await;
    let run = |app: &TestApp| {
        let calls = (0..100).map(|i| {
            let mut client = app.ratelimit.clone();
            let mut req = tonic::Request::new(inline(
                &format!("many-{}", i % 10),
                every_algorithm().remove(0),
                None,
            ));
            req.set_timeout(Duration::from_millis(500));
            tokio::spawn(async move { client.check(req).await })
        });
        futures::future::join_all(calls)
    };
    for r in run(&app).await {
        assert!(r.unwrap().is_ok());
    }
    app.own_redis().kill();
    for r in run(&app).await {
        let status = r.unwrap().expect_err("Redis is down");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
    app.own_redis().restart();
    app.wait_for_health(ServingStatus::Serving).await;
    for r in run(&app).await {
        assert!(r.unwrap().is_ok(), "every call succeeds once Redis is back");
    }
}

/// Single checks that arrive together are decided by one script call on a
/// single Redis server, each exactly as if alone: 50 concurrent checks of
/// each algorithm's limit of 10 admit exactly 10, in fewer script calls
/// than checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_checks_share_script_calls_and_stay_exact() {
    let mut app = crate::harness::spawn_app_with(Backend::OwnRedis, |_| {}).await;
    let key = crate::invariants::fresh("co");
    let before = app.own_redis().command_calls("evalsha");
    let mut calls = tokio::task::JoinSet::new();
    for (n, algorithm) in every_algorithm().into_iter().enumerate() {
        for _ in 0..50 {
            let mut c = app.ratelimit.clone();
            let request = inline(&format!("{key}-{n}"), algorithm, None);
            calls.spawn(async move {
                let answer = c.check(crate::harness::timed(request)).await;
                (n, answer.expect("a decision").into_inner().allowed)
            });
        }
    }
    let mut allowed = [0; 4];
    while let Some(done) = calls.join_next().await {
        let (n, ok) = done.unwrap();
        allowed[n] += usize::from(ok);
    }
    assert_eq!(allowed, [10; 4], "exactly the limit of each algorithm");
    let scripts = app.own_redis().command_calls("evalsha");
    assert!(
        scripts - before < 200,
        "{} script calls for 200 checks",
        scripts - before
    );
}
