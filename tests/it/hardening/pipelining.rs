//! The connections every call shares on one server (redis-rs's multiplexed
//! connections, `redis.connections` of them): exact answers under
//! concurrency, and the failure path: a frozen or dead Redis is UNAVAILABLE
//! within the deadline, and the store heals by itself when Redis is back.

use std::time::Duration;

use datalayer::proto::datalayer::cache::v1::{GetRequest, SetRequest};
use datalayer::proto::datalayer::ratelimit::v1::{
    CheckRequest, Limit, SlidingWindow, check_request::LimitSource, limit::Algorithm,
};
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
async fn shared_connections_answer_alike_fail_fast_and_heal() {
    let mut app = spawn_app_with(Backend::OwnRedis, |s| {
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

/// A frozen Redis holds every call until its answer times out; past
/// `MAX_IN_FLIGHT` (8192) calls waiting, a new one is refused at once as
/// overloaded instead of joining the wait, and once the waiting calls are
/// gone (their callers left) calls are taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_past_the_in_flight_bound_are_refused_at_once() {
    use std::sync::Arc;

    use datalayer::store::redis::{Redis, RedisSettings, RedisUrl};
    use deadpool_redis::redis;

    let server = crate::harness::redis::RedisServer::start();
    let settings = RedisSettings {
        url: Some(RedisUrl::new(server.url())),
        response_timeout: Duration::from_secs(60),
        // One connection, opened before the freeze: every call waits on it.
        connections: 1,
        ..RedisSettings::default()
    };
    let store = Arc::new(Redis::connect(&settings).expect("store"));
    let ping = || vec![redis::cmd("PING")];
    store.exec("ping", ping()).await.expect("Redis answers");

    server.pause();
    // Each call is polled once before it counts as waiting: by then it has
    // taken its place in flight and sent its PING to the frozen server.
    let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let waiting: Vec<_> = (0..8192)
        .map(|_| {
            let (store, started) = (store.clone(), started.clone());
            tokio::spawn(async move {
                let mut call = std::pin::pin!(store.exec("ping", ping()));
                let first = futures::poll!(call.as_mut());
                started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                match first {
                    std::task::Poll::Ready(answer) => answer,
                    std::task::Poll::Pending => call.await,
                }
            })
        })
        .collect();
    while started.load(std::sync::atomic::Ordering::SeqCst) < 8192 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let refused = tokio::time::timeout(Duration::from_secs(5), store.exec("ping", ping()))
        .await
        .expect("refused at once, not queued")
        .expect_err("the 8193rd call is refused");
    assert!(refused.is_unavailable(), "{refused:?}");
    assert!(refused.to_string().contains("overloaded"), "{refused}");
    assert!(
        waiting.iter().all(|t| !t.is_finished()),
        "callers still wait"
    );

    for task in &waiting {
        task.abort();
    }
    for task in waiting {
        let _ = task.await;
    }
    server.resume();
    store
        .exec("ping", ping())
        .await
        .expect("calls are taken again once the others left");
}

/// Calls that queue behind an attempt to open a connection share its
/// failure: with Redis frozen, 50 calls on a slot with no connection fail
/// together after one `connect_timeout`, not one after another (50 × 200 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_queued_behind_a_failed_connect_share_its_failure() {
    use std::sync::Arc;

    use datalayer::store::redis::{Redis, RedisSettings, RedisUrl};
    use deadpool_redis::redis;

    let server = crate::harness::redis::RedisServer::start();
    let settings = RedisSettings {
        url: Some(RedisUrl::new(server.url())),
        connections: 2,
        connect_timeout: Duration::from_millis(200),
        response_timeout: Duration::from_secs(60),
        ..RedisSettings::default()
    };
    let store = Arc::new(Redis::connect(&settings).expect("store"));
    let ping = || vec![redis::cmd("PING")];
    // Calls take the slots in turn: this opens the first one only.
    store.exec("ping", ping()).await.expect("Redis answers");

    server.pause();
    let calls: Vec<_> = (0..100)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.exec("ping", ping()).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let failed: Vec<_> = calls.iter().filter(|t| t.is_finished()).collect();
    assert_eq!(failed.len(), 50, "the calls on the unopened slot failed");
    server.resume();
    let mut answered = 0;
    let mut unavailable = 0;
    for call in calls {
        match call.await.expect("task") {
            Ok(_) => answered += 1,
            Err(e) if e.is_unavailable() => unavailable += 1,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!((answered, unavailable), (50, 50));
}
