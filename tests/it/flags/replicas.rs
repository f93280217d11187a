//! Two replicas on one Redis: a write through one reaches the other's
//! EventStream within a second; with Redis down both keep evaluating from
//! memory and writes are UNAVAILABLE; once it is back they converge, also
//! on a change whose notice they never got.

use std::time::{Duration, Instant};

use datalayer::proto::flagd::evaluation::v1 as flagd;
use datalayer::store::redis::RedisUrl;
use futures::StreamExt;
use tonic::Code;

use super::{admin, context, flagd as flagd_client, put, selected};
use crate::harness::{Backend, RedisServer, TestApp, start, test_settings};

const ON: &str = r#"{"state":"ENABLED","variants":{"on":"on","off":"off"},"defaultVariant":"on"}"#;
const OFF: &str =
    r#"{"state":"ENABLED","variants":{"on":"on","off":"off"},"defaultVariant":"off"}"#;

/// Two apps sharing one namespace on `redis`.
async fn replicas(redis: &RedisServer) -> (TestApp, TestApp) {
    let mut settings = test_settings();
    settings.redis.url = Some(RedisUrl::new(redis.url()));
    settings.redis.command_timeout = Duration::from_millis(200);
    let a = start(settings.clone(), Backend::Memory, None).await;
    let b = start(settings, Backend::Memory, None).await;
    (a, b)
}

async fn value(app: &TestApp, set: &str, key: &str) -> Result<String, tonic::Status> {
    flagd_client(app)
        .resolve_string(selected(
            set,
            flagd::ResolveStringRequest {
                flag_key: key.into(),
                context: context(&[]),
            },
        ))
        .await
        .map(|r| r.into_inner().value)
}

async fn eventually(app: &TestApp, set: &str, key: &str, want: &str, within: Duration) {
    let started = Instant::now();
    loop {
        if value(app, set, key).await.ok().as_deref() == Some(want) {
            return;
        }
        assert!(started.elapsed() < within, "{key} never became {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_one_replica_reaches_the_others_event_stream() {
    let redis = RedisServer::start();
    let (a, b) = replicas(&redis).await;
    let set = "shared";
    put(&a, set, "f", ON).await;
    eventually(&b, set, "f", "on", Duration::from_secs(5)).await;
    let mut events = flagd_client(&b)
        .event_stream(selected(set, flagd::EventStreamRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        events.next().await.unwrap().unwrap().r#type,
        "provider_ready"
    );
    let written = Instant::now();
    put(&a, set, "f", OFF).await;
    let change = tokio::time::timeout(Duration::from_secs(1), events.next())
        .await
        .expect("the other replica hears of it within a second")
        .unwrap()
        .unwrap();
    assert_eq!(change.r#type, "configuration_change");
    println!(
        "change reached the other replica after {:?}",
        written.elapsed()
    );
    assert_eq!(value(&b, set, "f").await.unwrap(), "off");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_evaluations_go_on_and_replicas_converge_when_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().to_string_lossy().into_owned();
    let mut redis = RedisServer::start_with(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--dir",
        &dir,
    ]);
    let (a, b) = replicas(&redis).await;
    let set = "outage";
    put(&a, set, "f", ON).await;
    eventually(&b, set, "f", "on", Duration::from_secs(5)).await;

    redis.kill();
    for app in [&a, &b] {
        assert_eq!(
            value(app, set, "f").await.unwrap(),
            "on",
            "evaluations never wait on Redis"
        );
    }
    let refused = admin(&a)
        .put(datalayer::proto::datalayer::flags::v1::PutRequest {
            flag_set: set.into(),
            key: "f".into(),
            definition: OFF.into(),
            expected_version: None,
        })
        .await
        .expect_err("writes need Redis");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");

    redis.restart();
    // A write through the other replica, once Redis answers again.
    let started = Instant::now();
    loop {
        let wrote = admin(&b)
            .put(datalayer::proto::datalayer::flags::v1::PutRequest {
                flag_set: set.into(),
                key: "f".into(),
                definition: OFF.into(),
                expected_version: None,
            })
            .await;
        if wrote.is_ok() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{wrote:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eventually(&a, set, "f", "off", Duration::from_secs(5)).await;

    // A change whose notice nobody sent (made straight in Redis) is found
    // by the resync.
    let ns = a.namespace.clone();
    let defs = format!("dl:{ns}:fl:{{{set}}}:defs");
    let meta = format!("dl:{ns}:fl:{{{set}}}:meta");
    redis.cmd(&["HSET", &defs, "f", ON]);
    redis.cmd(&["HINCRBY", &meta, "version", "1"]);
    eventually(&a, set, "f", "on", Duration::from_secs(5)).await;
    eventually(&b, set, "f", "on", Duration::from_secs(5)).await;
}
