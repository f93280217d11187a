//! SessionService conformance: every case runs against the memory store and
//! against a real `redis-server`, through the gRPC surface.

mod redis_only;

use std::{collections::HashMap, time::Duration};

use crate::harness::{Backend, TestApp, assert_bad_field, pb_duration, spawn_app};
use datalayer::proto::datalayer::session::v1::{
    ConsumeOneTimeTokenRequest, CountUserSessionsRequest, CreateRequest, CreateResponse,
    GetRequest, IssueOneTimeTokenRequest, ListUserSessionsRequest, OnSessionLimit, RevokeRequest,
    RevokeUserSessionsRequest, RotateRequest, Session, TouchRequest, UpdateMode, UpdateRequest,
};
use tonic::Code;

fn create(user: &str) -> CreateRequest {
    CreateRequest {
        user_id: user.to_owned(),
        data: HashMap::from([("role".to_owned(), "trader".to_owned())]),
        client_ip: "203.0.113.7".into(),
        user_agent: "bot/1.0".into(),
        ..Default::default()
    }
}

async fn do_create(app: &TestApp, req: CreateRequest) -> CreateResponse {
    app.sessions
        .clone()
        .create(req)
        .await
        .expect("create answers")
        .into_inner()
}

async fn get(app: &TestApp, token: &str, touch: bool) -> Result<Session, tonic::Status> {
    app.sessions
        .clone()
        .get(GetRequest {
            token: token.to_owned(),
            touch,
        })
        .await
        .map(|r| r.into_inner().session.expect("a session"))
}

fn micros(t: &Option<prost_types::Timestamp>) -> i64 {
    let t = t.as_ref().expect("timestamp set");
    t.seconds * 1_000_000 + i64::from(t.nanos) / 1000
}

fn assert_gone(result: Result<Session, tonic::Status>) {
    let status = result.expect_err("the session is gone");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
}

/// Create returns a long opaque token; Get returns what was stored.
async fn create_then_get(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = do_create(&app, create("alice")).await;
    assert_eq!(created.token.len(), 80, "tag + 256 random bits, hex");
    assert!(created.evicted_session_ids.is_empty());
    let session = created.session.expect("a session");
    assert_eq!(session.session_id.len(), 32);
    assert_eq!(session.user_id, "alice");
    assert_eq!(session.version, 1);

    let got = get(&app, &created.token, false).await.unwrap();
    assert_eq!(got.session_id, session.session_id);
    assert_eq!(got.data.get("role").map(String::as_str), Some("trader"));
    assert_eq!(got.client_ip, "203.0.113.7");
    assert_eq!(got.user_agent, "bot/1.0");
    assert_eq!(micros(&got.created_at), micros(&session.created_at));
    // Defaults: 30 min idle, 24 h absolute.
    let idle = micros(&got.expires_at) - micros(&got.last_seen_at);
    assert_eq!(idle, 30 * 60 * 1_000_000);
    let absolute = micros(&got.absolute_expires_at) - micros(&got.created_at);
    assert_eq!(absolute, 24 * 3600 * 1_000_000);

    // Two sessions never share a token.
    let other = do_create(&app, create("alice")).await;
    assert_ne!(other.token, created.token);
}

/// Idle expiry slides with touches but never past the absolute expiry.
async fn idle_and_absolute_expiry(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut req = create("bob");
    req.idle_ttl = Some(pb_duration(Duration::from_millis(300)));
    req.absolute_ttl = Some(pb_duration(Duration::from_millis(900)));
    let token = do_create(&app, req).await.token;

    // Touching every 150 ms keeps it alive past the idle TTL...
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let s = get(&app, &token, true)
            .await
            .expect("kept alive by touches");
        assert!(micros(&s.expires_at) <= micros(&s.absolute_expires_at));
    }
    // ...and a TouchSession near the end is capped by the absolute expiry.
    let touched = app
        .sessions
        .clone()
        .touch(TouchRequest {
            token: token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let s = get(&app, &token, false).await.unwrap();
    assert_eq!(micros(&touched.expires_at), micros(&s.absolute_expires_at));
    // Past the absolute expiry, touches no longer help.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_gone(get(&app, &token, true).await);

    // Without touches, the idle TTL ends it.
    let mut req = create("bob");
    req.idle_ttl = Some(pb_duration(Duration::from_millis(200)));
    let token = do_create(&app, req).await.token;
    get(&app, &token, false).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_gone(get(&app, &token, false).await);
}

/// At the cap, EVICT_OLDEST revokes the oldest session; REJECT refuses.
async fn session_cap(backend: Backend) {
    let app = spawn_app(backend).await;
    let capped = |on_limit: OnSessionLimit| {
        let mut req = create("carol");
        req.max_sessions_per_user = 3;
        req.on_limit = on_limit as i32;
        req
    };
    let mut tokens = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let c = do_create(&app, capped(OnSessionLimit::EvictOldest)).await;
        ids.push(c.session.unwrap().session_id);
        tokens.push(c.token);
    }
    let fourth = do_create(&app, capped(OnSessionLimit::EvictOldest)).await;
    assert_eq!(fourth.evicted_session_ids, vec![ids[0].clone()]);
    assert_gone(get(&app, &tokens[0], false).await);
    get(&app, &tokens[1], false).await.expect("second survives");

    let refused = app
        .sessions
        .clone()
        .create(capped(OnSessionLimit::Reject))
        .await
        .expect_err("at the cap");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let count = app
        .sessions
        .clone()
        .count_user_sessions(CountUserSessionsRequest {
            user_id: "carol".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .count;
    assert_eq!(count, 3);
}

/// Concurrent creates at the cap never leave more than the cap.
async fn cap_holds_under_concurrency(backend: Backend) {
    let app = spawn_app(backend).await;
    let creates = (0..30).map(|_| {
        let mut client = app.sessions.clone();
        tokio::spawn(async move {
            let mut req = create("dave");
            req.max_sessions_per_user = 5;
            client.create(req).await.map(|r| r.into_inner())
        })
    });
    let results = futures::future::join_all(creates).await;
    let evicted: usize = results
        .into_iter()
        .map(|r| r.expect("task").expect("create").evicted_session_ids.len())
        .sum();
    assert_eq!(evicted, 25);
    let listed = app
        .sessions
        .clone()
        .list_user_sessions(ListUserSessionsRequest {
            user_id: "dave".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert_eq!(listed.len(), 5);
}

/// Update merges or replaces, with compare-and-set on the version.
async fn update_merge_replace_and_cas(backend: Backend) {
    let app = spawn_app(backend).await;
    let token = do_create(&app, create("erin")).await.token;
    let mut client = app.sessions.clone();
    let merged = client
        .update(UpdateRequest {
            token: token.clone(),
            data: HashMap::from([("lang".into(), "de".into())]),
            mode: UpdateMode::Merge as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(merged.updated);
    let s = merged.session.unwrap();
    assert_eq!(s.version, 2);
    assert_eq!(s.data.len(), 2);

    let removed = client
        .update(UpdateRequest {
            token: token.clone(),
            remove_keys: vec!["role".into()],
            expected_version: Some(2),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(removed.updated);
    let s = removed.session.unwrap();
    assert_eq!(s.version, 3);
    assert_eq!(
        s.data,
        HashMap::from([("lang".to_owned(), "de".to_owned())])
    );

    // A writer that read version 2 loses.
    let stale = client
        .update(UpdateRequest {
            token: token.clone(),
            data: HashMap::from([("lang".into(), "fr".into())]),
            expected_version: Some(2),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!stale.updated);
    assert_eq!(stale.session.as_ref().unwrap().version, 3);
    assert_eq!(stale.session.unwrap().data["lang"], "de");

    let replaced = client
        .update(UpdateRequest {
            token: token.clone(),
            data: HashMap::from([("only".into(), "this".into())]),
            mode: UpdateMode::Replace as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        replaced.session.unwrap().data,
        HashMap::from([("only".to_owned(), "this".to_owned())])
    );
    let emptied = client
        .update(UpdateRequest {
            token: token.clone(),
            mode: UpdateMode::Replace as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(emptied.session.unwrap().data.is_empty());
    assert!(get(&app, &token, false).await.unwrap().data.is_empty());
}

/// Rotate issues a new token for the same session; the old one dies at once.
async fn rotate_kills_the_old_token(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = do_create(&app, create("frank")).await;
    let rotated = app
        .sessions
        .clone()
        .rotate(RotateRequest {
            token: created.token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(rotated.token, created.token);
    assert_eq!(
        rotated.session.unwrap().session_id,
        created.session.as_ref().unwrap().session_id
    );
    assert_gone(get(&app, &created.token, false).await);
    let s = get(&app, &rotated.token, false).await.unwrap();
    assert_eq!(s.session_id, created.session.unwrap().session_id);
    // Still listed once, under the new token.
    let listed = app
        .sessions
        .clone()
        .list_user_sessions(ListUserSessionsRequest {
            user_id: "frank".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert_eq!(listed.len(), 1);
    let again = app
        .sessions
        .clone()
        .rotate(RotateRequest {
            token: created.token,
        })
        .await
        .expect_err("the old token is dead");
    assert_eq!(again.code(), Code::NotFound);
}

/// List, revoke one, revoke all but one, count.
async fn list_and_revoke(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.sessions.clone();
    let mut tokens = Vec::new();
    for _ in 0..4 {
        tokens.push(do_create(&app, create("gina")).await.token);
    }
    do_create(&app, create("someone-else")).await;
    let listed = client
        .list_user_sessions(ListUserSessionsRequest {
            user_id: "gina".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert_eq!(listed.len(), 4);
    assert!(listed.iter().all(|s| s.user_id == "gina"));
    let created: Vec<i64> = listed.iter().map(|s| micros(&s.created_at)).collect();
    assert!(created.windows(2).all(|w| w[0] <= w[1]), "oldest first");

    let revoked = client
        .revoke(RevokeRequest {
            token: tokens[0].clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(revoked.revoked);
    assert_gone(get(&app, &tokens[0], false).await);
    let twice = client
        .revoke(RevokeRequest {
            token: tokens[0].clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!twice.revoked);

    let all_but_one = client
        .revoke_user_sessions(RevokeUserSessionsRequest {
            user_id: "gina".into(),
            except_token: tokens[3].clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all_but_one.revoked, 2);
    get(&app, &tokens[3], false)
        .await
        .expect("the kept session");
    assert_gone(get(&app, &tokens[1], false).await);
    let count = |user: &str| {
        let mut client = app.sessions.clone();
        let user = user.to_owned();
        async move {
            client
                .count_user_sessions(CountUserSessionsRequest { user_id: user })
                .await
                .unwrap()
                .into_inner()
                .count
        }
    };
    assert_eq!(count("gina").await, 1);
    assert_eq!(count("someone-else").await, 1);
    assert_eq!(count("nobody").await, 0);
}

/// 20 concurrent consumes of one one-time token: exactly one wins.
async fn one_time_tokens_are_consumed_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let issued = app
        .sessions
        .clone()
        .issue_one_time_token(IssueOneTimeTokenRequest {
            purpose: "email-verify".into(),
            subject: "alice@example.com".into(),
            ttl: Some(pb_duration(Duration::from_secs(60))),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(issued.token.len(), 64);

    // The wrong purpose neither works nor burns the token.
    let wrong = app
        .sessions
        .clone()
        .consume_one_time_token(ConsumeOneTimeTokenRequest {
            purpose: "password-reset".into(),
            token: issued.token.clone(),
        })
        .await
        .expect_err("wrong purpose");
    assert_eq!(wrong.code(), Code::NotFound);

    let attempts = (0..20).map(|_| {
        let mut client = app.sessions.clone();
        let token = issued.token.clone();
        tokio::spawn(async move {
            client
                .consume_one_time_token(ConsumeOneTimeTokenRequest {
                    purpose: "email-verify".into(),
                    token,
                })
                .await
        })
    });
    let results: Vec<_> = futures::future::join_all(attempts)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .collect();
    let wins: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().map(|r| r.get_ref().subject.clone()))
        .collect();
    assert_eq!(wins, vec!["alice@example.com".to_owned()]);
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(r.code(), Code::NotFound);
    }
}

/// One-time tokens expire.
async fn one_time_tokens_expire(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.sessions.clone();
    let issued = client
        .issue_one_time_token(IssueOneTimeTokenRequest {
            purpose: "login".into(),
            subject: "u1".into(),
            ttl: Some(pb_duration(Duration::from_millis(100))),
        })
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let late = client
        .consume_one_time_token(ConsumeOneTimeTokenRequest {
            purpose: "login".into(),
            token: issued.token,
        })
        .await
        .expect_err("expired");
    assert_eq!(late.code(), Code::NotFound);
}

/// Bad input is INVALID_ARGUMENT naming the field; unknown but well-formed
/// tokens are NOT_FOUND.
async fn bad_input_names_the_field(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut c = app.sessions.clone();
    assert_bad_field(c.create(create("")).await, "user_id");
    assert_bad_field(c.create(create(&"u".repeat(257))).await, "user_id");
    let mut big = create("u");
    big.data = HashMap::from([("k".into(), "v".repeat(65 * 1024))]);
    assert_bad_field(c.create(big).await, "data");
    let mut zero = create("u");
    zero.idle_ttl = Some(pb_duration(Duration::ZERO));
    assert_bad_field(c.create(zero).await, "idle_ttl");
    let mut long = create("u");
    long.absolute_ttl = Some(pb_duration(Duration::from_secs(91 * 24 * 3600)));
    assert_bad_field(c.create(long).await, "absolute_ttl");
    let mut cap = create("u");
    cap.max_sessions_per_user = 101;
    assert_bad_field(c.create(cap).await, "max_sessions_per_user");
    let mut limit = create("u");
    limit.on_limit = 7;
    assert_bad_field(c.create(limit).await, "on_limit");

    for token in ["", "short", &"G".repeat(80)] {
        assert_bad_field(
            c.get(GetRequest {
                token: token.into(),
                touch: false,
            })
            .await,
            "token",
        );
    }
    // Well-formed but unknown: NOT_FOUND, never INTERNAL.
    let unknown = "0".repeat(80);
    let status = c
        .get(GetRequest {
            token: unknown.clone(),
            touch: true,
        })
        .await
        .expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound);
    let status = c
        .update(UpdateRequest {
            token: unknown.clone(),
            ..Default::default()
        })
        .await
        .expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound);
    let status = c
        .touch(TouchRequest {
            token: unknown.clone(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound);
    let token = do_create(&app, create("u")).await.token;
    assert_bad_field(
        c.update(UpdateRequest {
            token: token.clone(),
            remove_keys: vec!["x".into()],
            mode: UpdateMode::Replace as i32,
            ..Default::default()
        })
        .await,
        "remove_keys",
    );
    assert_bad_field(
        c.update(UpdateRequest {
            token: token.clone(),
            expected_version: Some(u64::MAX),
            ..Default::default()
        })
        .await,
        "expected_version",
    );
    // Growing data past the bound by merges is refused too.
    let half = HashMap::from([("a".to_owned(), "v".repeat(40 * 1024))]);
    let first = c
        .update(UpdateRequest {
            token: token.clone(),
            data: half,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(first.updated);
    assert_bad_field(
        c.update(UpdateRequest {
            token: token.clone(),
            data: HashMap::from([("b".to_owned(), "v".repeat(40 * 1024))]),
            ..Default::default()
        })
        .await,
        "data",
    );
    assert_bad_field(
        c.revoke_user_sessions(RevokeUserSessionsRequest {
            user_id: "u".into(),
            except_token: "nope".into(),
        })
        .await,
        "except_token",
    );
    assert_bad_field(
        c.list_user_sessions(ListUserSessionsRequest {
            user_id: String::new(),
        })
        .await,
        "user_id",
    );
    assert_bad_field(
        c.issue_one_time_token(IssueOneTimeTokenRequest {
            purpose: "p".into(),
            subject: "s".into(),
            ttl: None,
        })
        .await,
        "ttl",
    );
    assert_bad_field(
        c.issue_one_time_token(IssueOneTimeTokenRequest {
            purpose: String::new(),
            subject: "s".into(),
            ttl: Some(pb_duration(Duration::from_secs(1))),
        })
        .await,
        "purpose",
    );
    assert_bad_field(
        c.consume_one_time_token(ConsumeOneTimeTokenRequest {
            purpose: "p".into(),
            token: "not-hex".into(),
        })
        .await,
        "token",
    );
    let status = c
        .consume_one_time_token(ConsumeOneTimeTokenRequest {
            purpose: "p".into(),
            token: "a".repeat(64),
        })
        .await
        .expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound);
}

conformance!(
    create_then_get,
    idle_and_absolute_expiry,
    session_cap,
    cap_holds_under_concurrency,
    update_merge_replace_and_cas,
    rotate_kills_the_old_token,
    list_and_revoke,
    one_time_tokens_are_consumed_once,
    one_time_tokens_expire,
    bad_input_names_the_field,
);

/// Every RPC (see `invariants`).
pub fn workload(app: &TestApp) -> futures::future::BoxFuture<'_, Result<(), tonic::Status>> {
    Box::pin(async move {
        use crate::harness::timed;
        let user = crate::invariants::fresh("user");
        let mut client = app.sessions.clone();
        let first = client.create(timed(create(&user))).await?.into_inner();
        let second = client.create(timed(create(&user))).await?.into_inner();
        client
            .get(timed(GetRequest {
                token: first.token.clone(),
                touch: true,
            }))
            .await?;
        client
            .update(timed(UpdateRequest {
                token: first.token.clone(),
                data: HashMap::from([("step".to_owned(), "2".to_owned())]),
                ..Default::default()
            }))
            .await?;
        client
            .touch(timed(TouchRequest {
                token: first.token.clone(),
            }))
            .await?;
        let rotated = client
            .rotate(timed(RotateRequest {
                token: first.token.clone(),
            }))
            .await?
            .into_inner();
        client
            .list_user_sessions(timed(ListUserSessionsRequest {
                user_id: user.clone(),
            }))
            .await?;
        client
            .count_user_sessions(timed(CountUserSessionsRequest {
                user_id: user.clone(),
            }))
            .await?;
        client
            .revoke(timed(RevokeRequest {
                token: second.token.clone(),
            }))
            .await?;
        let other = crate::invariants::fresh("other");
        client.create(timed(create(&other))).await?;
        client
            .revoke_user_sessions(timed(RevokeUserSessionsRequest {
                user_id: other,
                except_token: String::new(),
            }))
            .await?;
        let issued = client
            .issue_one_time_token(timed(IssueOneTimeTokenRequest {
                purpose: "login".into(),
                subject: user.clone(),
                ttl: Some(pb_duration(Duration::from_secs(60))),
            }))
            .await?
            .into_inner();
        client
            .issue_one_time_token(timed(IssueOneTimeTokenRequest {
                purpose: "login".into(),
                subject: user,
                ttl: Some(pb_duration(Duration::from_secs(60))),
            }))
            .await?;
        client
            .consume_one_time_token(timed(ConsumeOneTimeTokenRequest {
                token: issued.token,
                purpose: "login".into(),
            }))
            .await?;
        drop(rotated);
        Ok(())
    })
}
