//! Flood protection (`ratelimit.denial_cache`): denials Redis answered are
//! answered again in process until their retry time, without Redis (a
//! frozen Redis does not slow them), never admitting more than the limit,
//! never blocking a smaller cost that fits, and cleared on every replica by
//! a Reset.

use std::time::{Duration, Instant};

use datalayer::proto::datalayer::ratelimit::v1::{
    CheckRequest, Reason, ResetRequest, check_request::LimitSource, reset_request,
};
use datalayer::services::ratelimit::settings::{AlgorithmName, PolicySpec};

use crate::harness::{Backend, TestApp, test_settings, timed};
use crate::invariants::fresh;
use crate::metrics::{http_get, sample};

fn with_cache(s: &mut datalayer::config::Settings) {
    s.ratelimit.denial_cache = true;
    s.redis.command_timeout = Duration::from_secs(1);
    s.ratelimit.policies.insert(
        "ten".into(),
        PolicySpec {
            algorithm: Some(AlgorithmName::FixedWindow),
            limit: Some(10),
            window: Some(Duration::from_secs(3600)),
            ..Default::default()
        },
    );
}

fn ten(key: &str, cost: u64) -> CheckRequest {
    CheckRequest {
        reserve: false,
        key: key.into(),
        limit_source: Some(LimitSource::Policy("ten".into())),
        cost: Some(cost),
    }
}

async fn hits(app: &TestApp) -> f64 {
    let (_, text) = http_get(app.metrics_addr.unwrap(), "/metrics").await;
    sample(
        &text,
        "datalayer_ratelimit_denial_cache_lookups_total",
        &["result=\"hit\""],
    )
    .unwrap_or(0.0)
}

/// Denied once by Redis, then answered in process while Redis is frozen.
#[tokio::test]
async fn cached_denials_answer_without_redis() {
    let mut app = crate::harness::spawn_app_with(Backend::OwnRedis, with_cache).await;
    let key = fresh("flood");
    let mut rl = app.ratelimit.clone();
    assert!(
        rl.check(timed(ten(&key, 10)))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    let denied = rl.check(timed(ten(&key, 1))).await.unwrap().into_inner();
    assert_eq!(denied.reason, Reason::OverLimit as i32);
    let before = hits(&app).await;
    app.own_redis().pause();
    let started = Instant::now();
    for _ in 0..200 {
        let mut req = tonic::Request::new(ten(&key, 1));
        req.set_timeout(Duration::from_millis(500));
        let r = rl
            .check(req)
            .await
            .expect("answered while Redis is frozen")
            .into_inner();
        assert!(!r.allowed && r.retry_after.is_some(), "{r:?}");
    }
    let took = started.elapsed();
    app.own_redis().resume();
    assert!(hits(&app).await - before >= 200.0);
    // Another key still needs Redis (and gets it back).
    assert!(
        rl.check(timed(ten(&fresh("other"), 1)))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    eprintln!("200 cached denials with Redis frozen took {took:?}");
}

/// 200 concurrent checks of a limit of 10 with the cache on: exactly 10
/// are admitted. A smaller cost that fits is not blocked by a cached denial
/// of a larger one.
#[tokio::test]
async fn the_cache_never_admits_more_nor_blocks_what_fits() {
    let app = crate::harness::spawn_app_with(Backend::Redis, with_cache).await;
    let key = fresh("conc");
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let mut rl = app.ratelimit.clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let mut req = tonic::Request::new(ten(&key, 1));
            req.set_timeout(Duration::from_secs(5));
            rl.check(req).await.expect("check").into_inner().allowed
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        admitted += u32::from(t.await.unwrap());
    }
    assert_eq!(admitted, 10);
    let key = fresh("costs");
    let mut rl = app.ratelimit.clone();
    assert!(
        rl.check(timed(ten(&key, 7)))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    assert!(
        !rl.check(timed(ten(&key, 5)))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    assert!(
        !rl.check(timed(ten(&key, 6)))
            .await
            .unwrap()
            .into_inner()
            .allowed,
        "cached"
    );
    assert!(
        rl.check(timed(ten(&key, 3)))
            .await
            .unwrap()
            .into_inner()
            .allowed,
        "3 fits"
    );
}

/// A Reset on one replica clears the other replica's cached denial.
#[tokio::test]
async fn a_reset_clears_cached_denials_on_every_replica() {
    let mut settings = test_settings();
    settings.redis.url = Some(datalayer::store::redis::RedisUrl::new(
        crate::harness::redis::shared_redis().url(),
    ));
    with_cache(&mut settings);
    let a = crate::harness::start(settings.clone(), Backend::Redis, None).await;
    let b = crate::harness::start(settings, Backend::Redis, None).await;
    let key = fresh("reset");
    let mut on_a = a.ratelimit.clone();
    assert!(
        on_a.check(timed(ten(&key, 10)))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    assert!(
        !on_a
            .check(timed(ten(&key, 1)))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    b.ratelimit
        .clone()
        .reset(timed(ResetRequest {
            key: key.clone(),
            limit_source: Some(reset_request::LimitSource::Policy("ten".into())),
        }))
        .await
        .expect("reset");
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        if on_a
            .check(timed(ten(&key, 1)))
            .await
            .unwrap()
            .into_inner()
            .allowed
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replica a still denies after b's reset"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
