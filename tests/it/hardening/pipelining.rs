//! Both ways of sharing connections on one server, `redis.pipelining =
//! "multiplexed"` (the default, which every other test uses) and "lanes":
//! the same answers under concurrency, and the same failure path: a frozen
//! or dead Redis is UNAVAILABLE within the deadline, and the store heals by
//! itself when Redis is back.

use std::time::Duration;

use datalayer::proto::datalayer::cache::v1::{GetRequest, SetRequest};
use datalayer::proto::datalayer::ratelimit::v1::{
    CheckRequest, Limit, SlidingWindow, check_request::LimitSource, limit::Algorithm,
};
use datalayer::store::redis::RedisPipelining;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::harness::{Backend, TestApp, pb_duration, spawn_app_with};

fn timed<T>(message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.set_timeout(Duration::from_secs(2));
    r
}

async fn set(app: &TestApp, key: &str, value: &[u8]) -> Result<(), tonic::Status> {
    app.cache
        .clone()
        .set(timed(SetRequest {
            key: key.into(),
            value: value.to_vec(),
            ttl: Some(pb_duration(Duration::from_secs(600))),
            ..Default::default()
        }))
        .await
        .map(|_| ())
}

async fn get(app: &TestApp, key: &str) -> Result<Option<Vec<u8>>, tonic::Status> {
    let answer = app
        .cache
        .clone()
        .get(timed(GetRequest { key: key.into() }))
        .await?
        .into_inner();
    Ok(answer.entry.filter(|_| answer.found).map(|e| e.value))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiplexed_connections_answer_alike_fail_fast_and_heal() {
    answer_alike_fail_fast_and_heal(RedisPipelining::Multiplexed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lanes_answer_alike_fail_fast_and_heal() {
    answer_alike_fail_fast_and_heal(RedisPipelining::Lanes).await;
}

async fn answer_alike_fail_fast_and_heal(pipelining: RedisPipelining) {
    let mut app = spawn_app_with(Backend::OwnRedis, |s| {
        s.redis.pipelining = pipelining;
        s.redis.command_timeout = Duration::from_millis(300);
    })
    .await;
    app.wait_for_health(ServingStatus::Serving).await;

    // 200 concurrent checks of one key, 10 an hour: exactly 10 admitted.
    let limit = Limit {
        algorithm: Some(Algorithm::SlidingWindow(SlidingWindow {
            limit: 10,
            window: Some(pb_duration(Duration::from_secs(3600))),
        })),
        fail_mode: 0,
    };
    let calls = (0..200).map(|_| {
        let mut client = app.ratelimit.clone();
        let req = CheckRequest {
            key: "mux".into(),
            limit_source: Some(LimitSource::Limit(limit)),
            cost: None,
            reserve: false,
        };
        tokio::spawn(async move { client.check(timed(req)).await })
    });
    let mut admitted = 0;
    for call in futures::future::join_all(calls).await {
        if call
            .expect("task")
            .expect("check answers")
            .into_inner()
            .allowed
        {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 10);
    set(&app, "k", b"v1").await.expect("set");
    assert_eq!(get(&app, "k").await.unwrap().as_deref(), Some(&b"v1"[..]));

    // Frozen: UNAVAILABLE after the command timeout, not the caller's 2 s.
    app.own_redis().pause();
    let started = std::time::Instant::now();
    let frozen = get(&app, "k")
        .await
        .expect_err("a frozen Redis fails the call");
    assert_eq!(frozen.code(), Code::Unavailable, "{frozen:?}");
    assert!(
        started.elapsed() < Duration::from_millis(1900),
        "{:?}",
        started.elapsed()
    );
    app.own_redis().resume();
    assert_eq!(get(&app, "k").await.unwrap().as_deref(), Some(&b"v1"[..]));

    // Dead: UNAVAILABLE, NOT_SERVING; back: SERVING and answering again.
    app.own_redis().kill();
    app.wait_for_health(ServingStatus::NotServing).await;
    let dead = set(&app, "k", b"v2").await.expect_err("no Redis");
    assert_eq!(dead.code(), Code::Unavailable, "{dead:?}");
    app.own_redis().restart();
    app.wait_for_health(ServingStatus::Serving).await;
    set(&app, "k", b"v3")
        .await
        .expect("set after Redis came back");
    assert_eq!(get(&app, "k").await.unwrap().as_deref(), Some(&b"v3"[..]));
}
