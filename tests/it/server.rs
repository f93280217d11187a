//! Server-wide behaviour: health per service, graceful shutdown that lets
//! in-flight calls finish, and message-size limits.

use std::time::Duration;

use crate::harness::{Backend, spawn_app, spawn_app_with};
use datalayer::proto::datalayer::ratelimit::v1::{CheckRequest, check_request::LimitSource};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

fn closed_policy(key: &str) -> CheckRequest {
    CheckRequest {
        reserve: false,
        key: key.into(),
        limit_source: Some(LimitSource::Policy("closed".into())),
        cost: None,
    }
}

#[tokio::test]
async fn health_reports_each_service_and_unknown_ones_are_not_found() {
    for backend in [Backend::Memory, Backend::Redis] {
        let app = spawn_app(backend).await;
        app.wait_for_health(ServingStatus::Serving).await;
        assert_eq!(
            app.health_status("datalayer.ratelimit.v1.RateLimitService")
                .await,
            ServingStatus::Serving
        );
        let unknown = app
            .health
            .clone()
            .check(tonic_health::pb::HealthCheckRequest {
                service: "nope.Service".into(),
            })
            .await
            .expect_err("unknown service");
        assert_eq!(unknown.code(), Code::NotFound);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_calls_finish() {
    let mut app = spawn_app(Backend::OwnRedis).await;
    assert!(
        app.ratelimit
            .clone()
            .check(closed_policy("a"))
            .await
            .is_ok()
    );
    // Freeze Redis so a call is still in flight when shutdown starts.
    app.redis().pause();
    let mut client = app.ratelimit.clone();
    let in_flight = tokio::spawn(async move {
        let mut request = tonic::Request::new(closed_policy("a"));
        request.set_timeout(Duration::from_millis(800));
        client.check(request).await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let redis = app.take_own_redis();
    app.stop().await;
    let answer = in_flight.await.unwrap().expect_err("Redis is frozen");
    // An answer from the handler, not a connection torn down mid-call.
    assert_eq!(answer.code(), Code::Unavailable, "{answer:?}");
    drop(redis);
}

#[tokio::test]
async fn oversized_messages_are_refused() {
    let app = spawn_app_with(Backend::Memory, |s| s.server.max_request_bytes = 1024).await;
    let status = app
        .ratelimit
        .clone()
        .check(closed_policy(&"k".repeat(4096)))
        .await
        .expect_err("too large");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
}
