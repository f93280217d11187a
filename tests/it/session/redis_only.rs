//! Redis-only behaviour of SessionService: no live token in a dump, every
//! key expires by itself, the per-user index is pruned, and Redis down/back.

use std::time::Duration;

use crate::harness::{Backend, pb_duration, spawn_app};
use datalayer::proto::datalayer::session::v1::{
    CountUserSessionsRequest, CreateRequest, GetRequest, IssueOneTimeTokenRequest,
};
use tonic::Code;

fn create(user: &str, idle: Duration) -> CreateRequest {
    CreateRequest {
        user_id: user.to_owned(),
        idle_ttl: Some(pb_duration(idle)),
        ..Default::default()
    }
}

/// Neither session nor one-time tokens appear anywhere in Redis; every key
/// has a TTL no longer than the session's absolute expiry (plus slack).
#[tokio::test]
async fn redis_holds_hashes_only_and_every_key_expires() {
    let app = spawn_app(Backend::Redis).await;
    let mut client = app.sessions.clone();
    let session = client
        .create(create("alice", Duration::from_secs(60)))
        .await
        .unwrap()
        .into_inner();
    let one_time = client
        .issue_one_time_token(IssueOneTimeTokenRequest {
            purpose: "login".into(),
            subject: "alice".into(),
            ttl: Some(pb_duration(Duration::from_secs(60))),
        })
        .await
        .unwrap()
        .into_inner();
    let keys = app.keys();
    assert_eq!(
        keys.len(),
        3,
        "session, user index, one-time token: {keys:?}"
    );
    let secret = &session.token[16..];
    for key in &keys {
        assert!(
            !key.contains(secret) && !key.contains(&one_time.token),
            "{key}"
        );
        let ttl = app.redis().pttl(key);
        assert!(
            ttl > 0 && ttl <= (24 * 3600 + 60) * 1000,
            "{key} has PTTL {ttl}"
        );
        let dump = app.redis().cmd(&["DUMP", key]);
        assert!(!dump.contains(secret) && !dump.contains(&one_time.token));
    }
    let session_key = keys
        .iter()
        .find(|k| k.contains(":t:"))
        .expect("session key");
    let ttl = app.redis().pttl(session_key);
    assert!(ttl <= 60_000, "the idle TTL bounds the key: {ttl}");
}

/// Expired sessions leave the user's index as it is read.
#[tokio::test]
async fn the_user_index_is_pruned() {
    let app = spawn_app(Backend::Redis).await;
    let mut client = app.sessions.clone();
    // Long enough that none expires while the eleven are created on a
    // busy machine (the 11th create prunes what has expired).
    for _ in 0..10 {
        client
            .create(create("bob", Duration::from_secs(1)))
            .await
            .unwrap();
    }
    client
        .create(create("bob", Duration::from_secs(60)))
        .await
        .unwrap();
    let index = app
        .redis()
        .keys(&format!("dl:{}:*:idx", app.namespace))
        .pop()
        .expect("an index");
    assert_eq!(app.redis().int(&["ZCARD", &index]), 11);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let count = client
        .count_user_sessions(CountUserSessionsRequest {
            user_id: "bob".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .count;
    assert_eq!(count, 1);
    assert_eq!(
        app.redis().int(&["ZCARD", &index]),
        1,
        "expired members pruned"
    );
}

/// Redis down: UNAVAILABLE within the deadline; back: recovers by itself.
#[tokio::test]
async fn redis_down_then_back() {
    let mut app = spawn_app(Backend::OwnRedis).await;
    let token = app
        .sessions
        .clone()
        .create(create("carol", Duration::from_secs(60)))
        .await
        .unwrap()
        .into_inner()
        .token;
    let sessions = app.sessions.clone();
    let get = |token: String| {
        let mut client = sessions.clone();
        async move {
            let mut request = tonic::Request::new(GetRequest {
                token,
                touch: false,
            });
            request.set_timeout(Duration::from_millis(500));
            client.get(request).await
        }
    };
    app.own_redis().kill();
    let started = std::time::Instant::now();
    let status = get(token.clone()).await.expect_err("Redis is down");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(2));

    app.own_redis().restart();
    let mut answer = None;
    for _ in 0..50 {
        match get(token.clone()).await {
            Err(s) if s.code() == Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => {
                answer = Some(other);
                break;
            }
        }
    }
    // The restarted Redis is empty: the session is gone, reported as such.
    let status = answer.expect("recovered").expect_err("empty Redis");
    assert_eq!(status.code(), Code::NotFound);
}
