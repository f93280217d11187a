//! The audit log: administrative calls are recorded with who, what, when
//! and how they ended, newest first, in pages, per tenant.

use std::time::Duration;

use datalayer::proto::datalayer::audit::v1::{
    self as pb, audit_service_client::AuditServiceClient,
};
use datalayer::proto::datalayer::ratelimit::v1 as rl;

use crate::harness::{Backend, TestApp, assert_bad_field, spawn_app, timed};

fn client(app: &TestApp) -> AuditServiceClient<crate::harness::Channel> {
    AuditServiceClient::new(app.channel.clone())
}

fn reset(key: &str) -> rl::ResetRequest {
    rl::ResetRequest {
        key: key.into(),
        limit_source: Some(rl::reset_request::LimitSource::Policy("auth".into())),
    }
}

/// Events arrive a moment after the call (they are stored off its path).
async fn events(app: &TestApp, want: usize) -> Vec<pb::AuditEvent> {
    for _ in 0..100 {
        let got = client(app)
            .list(timed(pb::ListRequest {
                limit: 100,
                cursor: String::new(),
            }))
            .await
            .expect("list answers")
            .into_inner()
            .events;
        if got.len() >= want {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("fewer than {want} audit events");
}

async fn administrative_calls_are_recorded(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut rl = app.ratelimit.clone();
    rl.reset(timed(reset("user:1"))).await.unwrap();
    let unknown_policy = rl::ResetRequest {
        key: "user:2".into(),
        limit_source: Some(rl::reset_request::LimitSource::Policy("nope".into())),
    };
    let refused = rl.reset(timed(unknown_policy)).await.unwrap_err();
    // A plain check is not administrative: not recorded.
    rl.check(timed(rl::CheckRequest {
        reserve: false,
        key: "user:1".into(),
        limit_source: Some(rl::check_request::LimitSource::Policy("auth".into())),
        cost: None,
    }))
    .await
    .unwrap();
    let got = events(&app, 2).await;
    assert_eq!(got.len(), 2, "{got:?}");
    let (newest, oldest) = (&got[0], &got[1]);
    assert_eq!(
        oldest.method,
        "datalayer.ratelimit.v1.RateLimitService/Reset"
    );
    assert_eq!(oldest.target, "user:1");
    assert_eq!(oldest.outcome, "OK");
    assert_eq!(oldest.principal, "anonymous");
    assert!(oldest.time.is_some());
    assert_eq!(newest.target, "user:2");
    assert_eq!(
        newest.outcome,
        datalayer::metrics::code_label(refused.code())
    );
    assert!(newest.id > oldest.id);
}

async fn pages_go_back_in_time(backend: Backend) {
    let app = spawn_app(backend).await;
    for i in 0..7 {
        app.ratelimit
            .clone()
            .reset(timed(reset(&format!("k{i}"))))
            .await
            .unwrap();
    }
    events(&app, 7).await;
    let (mut cursor, mut targets) = (String::new(), Vec::new());
    loop {
        let page = client(&app)
            .list(timed(pb::ListRequest {
                limit: 3,
                cursor: cursor.clone(),
            }))
            .await
            .unwrap()
            .into_inner();
        targets.extend(page.events.into_iter().map(|e| e.target));
        cursor = page.next_cursor;
        if cursor.is_empty() {
            break;
        }
    }
    let want: Vec<String> = (0..7).rev().map(|i| format!("k{i}")).collect();
    assert_eq!(targets, want);
    assert_bad_field(
        client(&app)
            .list(timed(pb::ListRequest {
                limit: 100_000,
                cursor: String::new(),
            }))
            .await,
        "limit",
    );
    assert_bad_field(
        client(&app)
            .list(timed(pb::ListRequest {
                limit: 1,
                cursor: "x{".into(),
            }))
            .await,
        "cursor",
    );
}

crate::conformance!(administrative_calls_are_recorded, pages_go_back_in_time);

/// An administrative call and a read of the log (see `invariants`).
pub fn workload(app: &TestApp) -> futures::future::BoxFuture<'_, Result<(), tonic::Status>> {
    Box::pin(async move {
        app.ratelimit
            .clone()
            .reset(timed(reset(&crate::invariants::fresh("audited"))))
            .await?;
        client(app).list(timed(pb::ListRequest::default())).await?;
        Ok(())
    })
}
