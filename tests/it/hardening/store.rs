//! A Redis that is full, read-only or refuses our password: writes are
//! refused as they should be, answered with the right code (no retry hint
//! that can never succeed), and health says the store cannot serve.

use std::time::{Duration, Instant};

use datalayer::proto::datalayer::{
    cache::v1::{GetRequest, SetRequest},
    ratelimit::v1::{CheckRequest, check_request::LimitSource},
    session::v1::{
        CountUserSessionsRequest, CreateRequest, GetRequest as GetSessionRequest,
        ListUserSessionsRequest,
    },
};
use datalayer::store::redis::RedisUrl;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_types::StatusExt;

use crate::harness::{Backend, RedisServer, pb_duration, spawn_app_with};

fn set(key: &str, bytes: usize) -> SetRequest {
    SetRequest {
        key: key.to_owned(),
        value: vec![b'x'; bytes],
        ttl: Some(pb_duration(Duration::from_secs(600))),
        ..Default::default()
    }
}

fn check(key: &str) -> CheckRequest {
    CheckRequest {
        reserve: false,
        key: key.to_owned(),
        limit_source: Some(LimitSource::Policy("closed".into())),
        cost: None,
    }
}

fn used_memory(redis: &RedisServer) -> u64 {
    let info = redis.cmd(&["INFO", "memory"]);
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory")
}

/// With `maxmemory 3mb noeviction`, cache writes stop at the limit like
/// every other write, as RESOURCE_EXHAUSTED without a retry hint; reads go
/// on; health reports NOT_SERVING until memory is freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_refuses_every_write_and_health_says_so() {
    let redis =
        RedisServer::start_with(&["--maxmemory", "3mb", "--maxmemory-policy", "noeviction"]);
    let url = redis.url();
    let app = spawn_app_with(Backend::Memory, move |s| {
        s.redis.url = Some(RedisUrl::new(url));
    })
    .await;
    app.wait_for_health(ServingStatus::Serving).await;
    let mut cache = app.cache.clone();
    cache
        .set(set("kept", 100))
        .await
        .expect("a write while there is room");
    let session = app
        .sessions
        .clone()
        .create(CreateRequest {
            user_id: "kept".into(),
            ..Default::default()
        })
        .await
        .expect("a session while there is room")
        .into_inner();
    let mut refused = None;
    for i in 0..2000 {
        match cache.set(set(&format!("big-{i}"), 10 * 1024)).await {
            Ok(answer) => assert!(answer.into_inner().stored),
            Err(status) => {
                refused = Some(status);
                break;
            }
        }
    }
    let refused = refused.expect("Redis refuses writes once full");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.get_details_retry_info().is_none(), "no retry hint");
    assert!(
        used_memory(&redis) < 4 * 1024 * 1024,
        "stored past maxmemory: {}",
        used_memory(&redis)
    );
    // Now make Redis well over its limit: every write must be refused.
    let half = (used_memory(&redis) / 2).to_string();
    assert!(
        redis
            .cmd(&["CONFIG", "SET", "maxmemory", &half])
            .starts_with("+OK")
    );
    let status = cache.set(set("small", 10)).await.expect_err("full");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let status = app
        .ratelimit
        .clone()
        .check(check("k"))
        .await
        .expect_err("full");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let status = app
        .sessions
        .clone()
        .create(CreateRequest {
            user_id: "u".into(),
            ..Default::default()
        })
        .await
        .expect_err("full");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    // Reads still work: the read script declares no-writes.
    let found = cache
        .get(GetRequest { key: "kept".into() })
        .await
        .expect("reads work on a full Redis")
        .into_inner();
    assert!(found.found);
    let mut sessions = app.sessions.clone();
    sessions
        .get(GetSessionRequest {
            token: session.token.clone(),
            touch: false,
        })
        .await
        .expect("a session can be read on a full Redis");
    let count = sessions
        .count_user_sessions(CountUserSessionsRequest {
            user_id: "kept".into(),
        })
        .await
        .expect("sessions can be counted on a full Redis")
        .into_inner()
        .count;
    assert_eq!(count, 1);
    sessions
        .list_user_sessions(ListUserSessionsRequest {
            user_id: "kept".into(),
        })
        .await
        .expect("sessions can be listed on a full Redis");
    app.wait_for_health(ServingStatus::NotServing).await;
    // Memory raised: writes and health come back by themselves.
    assert!(
        redis
            .cmd(&["CONFIG", "SET", "maxmemory", "0"])
            .starts_with("+OK")
    );
    app.wait_for_health(ServingStatus::Serving).await;
    cache
        .set(set("again", 100))
        .await
        .expect("writes work again");
}

/// After a failover the URL may point at a replica: every write fails as
/// UNAVAILABLE with no retry hint (retrying cannot help), reads work, and
/// health is NOT_SERVING.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_replica_is_not_serving() {
    let master = RedisServer::start();
    let port = master.port.to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]);
    master.cmd(&["SET", "x", "1"]);
    let url = replica.url();
    let app = spawn_app_with(Backend::Memory, move |s| {
        s.redis.url = Some(RedisUrl::new(url));
    })
    .await;
    app.wait_for_health(ServingStatus::NotServing).await;
    let status = app
        .ratelimit
        .clone()
        .check(check("k"))
        .await
        .expect_err("read-only");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.get_details_retry_info().is_none(), "{status:?}");
    assert!(status.message().contains("read-only replica"), "{status:?}");
    let found = app
        .cache
        .clone()
        .get(GetRequest {
            key: "missing".into(),
        })
        .await
        .expect("reads work on a replica");
    assert!(!found.into_inner().found);
    // Health stays NOT_SERVING: it is not a blip.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.health_status("").await, ServingStatus::NotServing);
    drop(master);
}

/// A wrong password is a misconfiguration: UNAVAILABLE without a retry
/// hint, within the deadline, and NOT_SERVING.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_unavailable_without_a_retry_hint() {
    let redis = RedisServer::start_with(&["--requirepass", "right"]);
    let url = format!("redis://:wrong@127.0.0.1:{}", redis.port);
    let app = spawn_app_with(Backend::Memory, move |s| {
        s.redis.url = Some(RedisUrl::new(url));
    })
    .await;
    app.wait_for_health(ServingStatus::NotServing).await;
    let started = Instant::now();
    let mut request = tonic::Request::new(check("k"));
    request.set_timeout(Duration::from_secs(1));
    let status = app
        .ratelimit
        .clone()
        .check(request)
        .await
        .expect_err("refused");
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.get_details_retry_info().is_none(), "{status:?}");
    drop(redis);
}
