//! The example service (`--features echo`): what adding a service through
//! the registration list gives without more code — its routes, health, the
//! shared call path for unary and server-streaming RPCs, and the invariants.

use std::time::{Duration, Instant};

use datalayer::proto::datalayer::echo::v1::{
    RepeatRequest, SayRequest, echo_service_client::EchoServiceClient,
};
use futures::StreamExt;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::harness::{Backend, TestApp, assert_bad_field, spawn_app, timed};

fn client(app: &TestApp) -> EchoServiceClient<crate::harness::Channel> {
    EchoServiceClient::new(app.channel.clone())
}

pub fn workload(app: &TestApp) -> futures::future::BoxFuture<'_, Result<(), tonic::Status>> {
    Box::pin(async move {
        let text = crate::invariants::fresh("hello");
        client(app).say(timed(SayRequest { text })).await?;
        Ok(())
    })
}

async fn say_counts_per_tenant(backend: Backend) {
    let app = spawn_app(backend).await;
    let other = spawn_app(backend).await;
    for expected in 1..=3 {
        let answer = client(&app)
            .say(SayRequest { text: "hi".into() })
            .await
            .expect("say")
            .into_inner();
        assert_eq!((answer.text.as_str(), answer.count), ("hi", expected));
    }
    // Another app has another namespace: its own count.
    let answer = client(&other)
        .say(SayRequest { text: "hi".into() })
        .await
        .expect("say")
        .into_inner();
    assert_eq!(answer.count, 1);
    assert_bad_field(
        client(&app)
            .say(SayRequest {
                text: String::new(),
            })
            .await,
        "text",
    );
}

async fn repeat_streams_in_order_and_validates(backend: Backend) {
    let app = spawn_app(backend).await;
    let stream = client(&app)
        .repeat(RepeatRequest {
            text: "tick".into(),
            times: 5,
            interval_ms: 1,
        })
        .await
        .expect("stream opens")
        .into_inner();
    let items: Vec<_> = stream.collect().await;
    let indexes: Vec<u32> = items
        .into_iter()
        .map(|item| item.expect("item").index)
        .collect();
    assert_eq!(indexes, [0, 1, 2, 3, 4]);
    let bad = client(&app)
        .repeat(RepeatRequest {
            text: String::new(),
            times: 0,
            interval_ms: 0,
        })
        .await;
    let status = bad.expect_err("bad input");
    assert_eq!(status.code(), Code::InvalidArgument);
    let details = tonic_types::StatusExt::get_details_bad_request(&status).expect("BadRequest");
    let fields: Vec<&str> = details
        .field_violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    assert_eq!(fields, ["text", "times"], "every bad field at once");
}

conformance!(say_counts_per_tenant, repeat_streams_in_order_and_validates);

#[tokio::test]
async fn health_names_come_from_the_registration() {
    let app = spawn_app(Backend::Memory).await;
    app.wait_for_health(ServingStatus::Serving).await;
    assert_eq!(
        app.health_status("datalayer.echo.v1.EchoService").await,
        ServingStatus::Serving
    );
}

#[tokio::test]
async fn a_stream_ends_at_the_callers_deadline() {
    let app = spawn_app(Backend::Memory).await;
    let mut request = tonic::Request::new(RepeatRequest {
        text: "slow".into(),
        times: 100,
        interval_ms: 1000,
    });
    request.set_timeout(Duration::from_millis(300));
    let mut stream = client(&app)
        .repeat(request)
        .await
        .expect("opens")
        .into_inner();
    assert_eq!(stream.next().await.expect("first").expect("ok").index, 0);
    let end = stream.next().await.expect("an end");
    let status = end.expect_err("the deadline ends the stream");
    assert_eq!(status.code(), Code::DeadlineExceeded);
}

#[tokio::test]
async fn shutdown_ends_open_streams_without_waiting_the_grace() {
    let app = crate::harness::spawn_app_with(Backend::Memory, |s| {
        s.server.shutdown_grace = Duration::from_secs(30);
    })
    .await;
    let mut stream = client(&app)
        .repeat(RepeatRequest {
            text: "forever".into(),
            times: 100,
            interval_ms: 1000,
        })
        .await
        .expect("opens")
        .into_inner();
    assert!(stream.next().await.expect("first").is_ok());
    let started = Instant::now();
    app.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "shutdown waited {:?} on an open stream",
        started.elapsed()
    );
    // The stream ended cleanly (or the connection closed under it).
    if let Some(Err(status)) = stream.next().await {
        assert_ne!(status.code(), Code::Internal, "{status:?}");
    }
}
