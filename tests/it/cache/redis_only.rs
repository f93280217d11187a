//! Redis-only behaviour of CacheService: every key has a bounded TTL, tag
//! indexes stay bounded, scripts come back after a flush, and the failure
//! paths (Redis down and back).

use std::time::Duration;

use crate::harness::{Backend, TestApp, pb_duration, spawn_app};
use datalayer::proto::datalayer::cache::v1::{
    DeleteRequest, GetOrLeaseRequest, GetRequest, InvalidateTagsRequest, SetRequest,
};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

fn tagged(key: &str, ttl: Duration, tags: &[&str]) -> SetRequest {
    SetRequest {
        key: key.to_owned(),
        value: b"v".to_vec(),
        ttl: Some(pb_duration(ttl)),
        stale_ttl: Some(pb_duration(ttl)),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        ..Default::default()
    }
}

async fn get(app: &TestApp, key: &str) -> Result<bool, tonic::Status> {
    let mut request = tonic::Request::new(GetRequest { key: key.into() });
    request.set_timeout(Duration::from_millis(500));
    app.cache
        .clone()
        .get(request)
        .await
        .map(|r| r.into_inner().found)
}

/// Entries, leases, tag indexes and invalidation marks all expire.
#[tokio::test]
async fn every_cache_key_has_a_bounded_ttl() {
    let app = spawn_app(Backend::Redis).await;
    let mut cache = app.cache.clone();
    cache
        .set(tagged("e", Duration::from_secs(60), &["t1", "t2"]))
        .await
        .unwrap();
    cache
        .get_or_lease(GetOrLeaseRequest {
            key: "leased".into(),
            lease_ttl: None,
        })
        .await
        .unwrap();
    cache
        .invalidate_tags(InvalidateTagsRequest {
            tags: vec!["t3".into()],
        })
        .await
        .unwrap();
    let written = app.keys();
    assert_eq!(
        written.len(),
        5,
        "an entry, a lease, 2 tag indexes and an invalidation mark: {written:?}"
    );
    for key in written {
        let ttl = app.redis().pttl(&key);
        assert!(
            ttl > 0 && ttl <= 3_600_000 + 1000,
            "{key} has PTTL {ttl}, not a bounded TTL"
        );
    }
}

/// Entries leave their tag index once they have expired (a deleted entry
/// too: Delete leaves the index alone, as a concurrent re-Set of the key may
/// need its membership), so the index never outgrows the live entries.
#[tokio::test]
async fn tag_indexes_stay_bounded() {
    let app = spawn_app(Backend::Redis).await;
    let mut cache = app.cache.clone();
    for i in 0..20 {
        cache
            .set(tagged(
                &format!("old{i}"),
                Duration::from_millis(50),
                &["t"],
            ))
            .await
            .unwrap();
    }
    cache
        .set(tagged("doomed", Duration::from_secs(60), &["t"]))
        .await
        .unwrap();
    let index = app
        .redis()
        .keys(&format!("dl:{}:ct:{{t}}:idx", app.namespace))
        .pop()
        .expect("a tag index");
    assert_eq!(app.redis().int(&["ZCARD", &index]), 21);

    cache
        .delete(DeleteRequest {
            key: "doomed".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        app.redis().int(&["ZCARD", &index]),
        21,
        "kept until its score passes"
    );

    // Index scores carry a minute of slack past expiry; age them by hand to
    // stand for that minute passing, then a new write prunes them.
    let members = app.redis().cmd(&["ZRANGE", &index, "0", "-1"]);
    for member in members
        .split("\r\n")
        .skip(1)
        .filter(|l| !l.is_empty() && !l.starts_with('$'))
    {
        app.redis().cmd(&["ZADD", &index, "XX", "1", member]);
    }
    cache
        .set(tagged("new", Duration::from_secs(60), &["t"]))
        .await
        .unwrap();
    assert_eq!(
        app.redis().int(&["ZCARD", &index]),
        1,
        "expired members pruned"
    );
}

/// Scripts flushed from Redis are reloaded without the caller noticing.
#[tokio::test]
async fn scripts_reload_after_a_flush() {
    let app = spawn_app(Backend::OwnRedis).await;
    let mut cache = app.cache.clone();
    cache
        .set(tagged("k", Duration::from_secs(60), &[]))
        .await
        .unwrap();
    app.redis().cmd(&["SCRIPT", "FLUSH"]);
    assert!(get(&app, "k").await.unwrap());
}

/// Redis down: calls answer UNAVAILABLE within their deadline and health
/// goes NOT_SERVING; Redis back: the service recovers by itself.
#[tokio::test]
async fn redis_down_then_back() {
    let mut app = spawn_app(Backend::OwnRedis).await;
    app.cache
        .clone()
        .set(tagged("k", Duration::from_secs(60), &[]))
        .await
        .unwrap();
    app.own_redis().kill();
    let started = std::time::Instant::now();
    let status = get(&app, "k").await.expect_err("Redis is down");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered within the deadline"
    );
    app.wait_for_health(ServingStatus::NotServing).await;
    assert_eq!(
        app.health_status("datalayer.cache.v1.CacheService").await,
        ServingStatus::NotServing
    );

    app.own_redis().restart();
    app.wait_for_health(ServingStatus::Serving).await;
    // The restarted Redis is empty (no persistence): a miss, not an error.
    let mut recovered = false;
    for _ in 0..50 {
        if let Ok(found) = get(&app, "k").await {
            assert!(!found);
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "the service recovered once Redis was back");
}
