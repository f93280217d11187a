//! Which failures say "retry": UNAVAILABLE carries RetryInfo only when
//! repeating the call cannot apply it twice — a read, or a write that never
//! reached Redis. A write that timed out on a frozen Redis may have been
//! applied: no RetryInfo, and the message says so (clients retry only what
//! carries RetryInfo).

use std::time::Duration;

use datalayer::proto::datalayer::cache::v1::{GetRequest, SetRequest};
use tonic::Code;
use tonic_types::StatusExt;

use crate::harness::{Backend, pb_duration, spawn_app_with};

fn set() -> tonic::Request<SetRequest> {
    let mut r = tonic::Request::new(SetRequest {
        key: "k".into(),
        value: b"v".to_vec(),
        ttl: Some(pb_duration(Duration::from_secs(60))),
        ..Default::default()
    });
    r.set_timeout(Duration::from_secs(3));
    r
}

fn get() -> tonic::Request<GetRequest> {
    let mut r = tonic::Request::new(GetRequest { key: "k".into() });
    r.set_timeout(Duration::from_secs(3));
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_safe_retries_carry_retry_info() {
    let mut app = spawn_app_with(Backend::OwnRedis, |s| {
        s.redis.command_timeout = Duration::from_millis(300);
    })
    .await;
    let mut cache = app.cache.clone();
    cache.set(set()).await.expect("healthy");

    app.own_redis().pause();
    let write = cache.set(set()).await.unwrap_err();
    assert_eq!(write.code(), Code::Unavailable);
    assert!(write.get_details_retry_info().is_none(), "{write:?}");
    assert!(
        write.message().contains("may have been applied"),
        "{write:?}"
    );
    let read = cache.get(get()).await.unwrap_err();
    assert_eq!(read.code(), Code::Unavailable);
    assert!(
        read.get_details_retry_info().is_some(),
        "a read is safe to retry: {read:?}"
    );
    app.own_redis().resume();

    app.own_redis().kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = cache.set(set()).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable);
    assert!(
        refused.get_details_retry_info().is_some(),
        "a refused connection ran nothing: {refused:?}"
    );
}
