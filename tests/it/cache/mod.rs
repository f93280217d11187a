//! CacheService conformance: every case runs against the memory store and
//! against a real `redis-server`, through the gRPC surface.

mod redis_only;

use std::time::Duration;

use crate::harness::{Backend, TestApp, assert_bad_field, pb_duration, spawn_app, spawn_app_with};
use datalayer::proto::datalayer::cache::v1::{
    DeleteRequest, GetManyRequest, GetOrLeaseRequest, GetOrLeaseResponse, GetRequest, GetResponse,
    InvalidateTagsRequest, LeaseStatus, SetCondition, SetManyRequest, SetOutcome, SetRequest,
    SetResponse,
};

fn set(key: &str, value: &str, ttl: Duration) -> SetRequest {
    SetRequest {
        key: key.to_owned(),
        value: value.as_bytes().to_vec(),
        ttl: Some(pb_duration(ttl)),
        ..Default::default()
    }
}

const MINUTE: Duration = Duration::from_secs(60);

async fn do_set(app: &TestApp, req: SetRequest) -> SetResponse {
    app.cache
        .clone()
        .set(req)
        .await
        .expect("set answers")
        .into_inner()
}

async fn do_get(app: &TestApp, key: &str) -> GetResponse {
    app.cache
        .clone()
        .get(GetRequest {
            key: key.to_owned(),
        })
        .await
        .expect("get answers")
        .into_inner()
}

async fn lease(app: &TestApp, key: &str) -> GetOrLeaseResponse {
    app.cache
        .clone()
        .get_or_lease(GetOrLeaseRequest {
            key: key.to_owned(),
            lease_ttl: None,
        })
        .await
        .expect("get_or_lease answers")
        .into_inner()
}

fn secs(d: &Option<prost_types::Duration>) -> f64 {
    let d = d.as_ref().expect("duration set");
    d.seconds as f64 + d.nanos as f64 / 1e9
}

fn value(r: &GetResponse) -> &[u8] {
    &r.entry.as_ref().expect("an entry").value
}

/// A Set is read back with its value, content type, tags, version and TTL.
async fn set_then_get_round_trips(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut req = set("btc:rsi", "61.5", MINUTE);
    req.content_type = "text/plain".into();
    req.tags = vec!["btc".into(), "indicators".into()];
    let stored = do_set(&app, req).await;
    assert!(stored.stored);
    assert_eq!(stored.outcome, SetOutcome::Stored as i32);
    assert!(stored.version > 0);

    let got = do_get(&app, "btc:rsi").await;
    assert!(got.found);
    let entry = got.entry.as_ref().unwrap();
    assert_eq!(entry.value.as_slice(), b"61.5");
    assert_eq!(entry.content_type, "text/plain");
    assert_eq!(entry.version, stored.version);
    assert_eq!(entry.tags, vec!["btc".to_owned(), "indicators".to_owned()]);
    assert!(!entry.stale);
    let ttl = secs(&entry.ttl);
    assert!(ttl > 50.0 && ttl <= 60.0, "ttl {ttl}");
    assert!((secs(&entry.expires_in) - ttl).abs() < 0.01);

    let missing = do_get(&app, "nope").await;
    assert!(!missing.found);
    assert!(missing.entry.is_none());
}

/// After its TTL an entry is gone.
async fn entries_expire(backend: Backend) {
    let app = spawn_app(backend).await;
    do_set(&app, set("short", "v", Duration::from_millis(200))).await;
    assert!(do_get(&app, "short").await.found);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(!do_get(&app, "short").await.found);
}

/// Stale-while-revalidate: after the fresh period the value is served as
/// stale until the stale period ends, then it is gone.
async fn stale_while_revalidate(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut req = set("swr", "old", Duration::from_millis(200));
    req.stale_ttl = Some(pb_duration(Duration::from_millis(800)));
    do_set(&app, req).await;
    let fresh = do_get(&app, "swr").await;
    assert!(!fresh.entry.as_ref().unwrap().stale);

    tokio::time::sleep(Duration::from_millis(300)).await;
    let stale = do_get(&app, "swr").await;
    assert!(stale.found, "served during the stale period");
    let entry = stale.entry.as_ref().unwrap();
    assert!(entry.stale);
    assert_eq!(entry.value.as_slice(), b"old");
    assert_eq!(secs(&entry.ttl), 0.0);
    assert!(secs(&entry.expires_in) > 0.0);

    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(!do_get(&app, "swr").await.found);
}

/// IF_ABSENT and IF_PRESENT conditions.
async fn conditional_writes(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut present = set("k", "a", MINUTE);
    present.condition = SetCondition::IfPresent as i32;
    let r = do_set(&app, present.clone()).await;
    assert!(!r.stored);
    assert_eq!(r.outcome, SetOutcome::ConditionFailed as i32);
    assert!(!do_get(&app, "k").await.found);

    let mut absent = set("k", "a", MINUTE);
    absent.condition = SetCondition::IfAbsent as i32;
    assert!(do_set(&app, absent.clone()).await.stored);
    absent.value = b"b".to_vec();
    let r = do_set(&app, absent).await;
    assert_eq!(r.outcome, SetOutcome::ConditionFailed as i32);
    assert_eq!(value(&do_get(&app, "k").await), b"a");

    present.value = b"c".to_vec();
    assert!(do_set(&app, present).await.stored);
    assert_eq!(value(&do_get(&app, "k").await), b"c");
}

/// Compare-and-set on versions: the stale writer loses.
async fn compare_and_set(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut create = set("cas", "v1", MINUTE);
    create.expected_version = Some(0);
    let v1 = do_set(&app, create.clone()).await;
    assert!(v1.stored, "expected_version 0 creates a missing entry");
    let again = do_set(&app, create).await;
    assert_eq!(again.outcome, SetOutcome::VersionMismatch as i32);
    assert_eq!(again.version, v1.version);

    let mut update = set("cas", "v2", MINUTE);
    update.expected_version = Some(v1.version);
    let v2 = do_set(&app, update.clone()).await;
    assert!(v2.stored);
    assert!(v2.version > v1.version);

    // A second writer that read v1 too is refused.
    update.value = b"v2-other".to_vec();
    let lost = do_set(&app, update).await;
    assert!(!lost.stored);
    assert_eq!(lost.outcome, SetOutcome::VersionMismatch as i32);
    assert_eq!(lost.version, v2.version);
    assert_eq!(value(&do_get(&app, "cas").await), b"v2");
}

/// Delete removes the entry; a second Delete finds nothing.
async fn delete_removes(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut req = set("d", "v", MINUTE);
    req.tags = vec!["t".into()];
    do_set(&app, req).await;
    let mut cache = app.cache.clone();
    let first = cache
        .delete(DeleteRequest { key: "d".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(first.deleted);
    assert!(!do_get(&app, "d").await.found);
    let second = cache
        .delete(DeleteRequest { key: "d".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(!second.deleted);
    let gone = cache
        .invalidate_tags(InvalidateTagsRequest {
            tags: vec!["t".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(gone.invalidated, 0, "a deleted entry is not counted again");
}

/// GetMany and SetMany answer in order.
async fn batches_answer_in_order(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut cache = app.cache.clone();
    let mut only_new = set("b", "x", MINUTE);
    only_new.condition = SetCondition::IfAbsent as i32;
    do_set(&app, set("b", "existing", MINUTE)).await;
    let results = cache
        .set_many(SetManyRequest {
            entries: vec![set("a", "1", MINUTE), only_new, set("c", "3", MINUTE)],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    let outcomes: Vec<i32> = results.iter().map(|r| r.outcome).collect();
    assert_eq!(
        outcomes,
        vec![
            SetOutcome::Stored as i32,
            SetOutcome::ConditionFailed as i32,
            SetOutcome::Stored as i32
        ]
    );
    let entries = cache
        .get_many(GetManyRequest {
            keys: vec!["c".into(), "missing".into(), "a".into(), "b".into()],
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    let values: Vec<Option<&[u8]>> = entries.iter().map(|e| e.found.then(|| value(e))).collect();
    assert_eq!(
        values,
        vec![
            Some(&b"3"[..]),
            None,
            Some(&b"1"[..]),
            Some(&b"existing"[..])
        ]
    );
}

/// InvalidateTags deletes every entry carrying any of the tags, counts
/// them, and spares entries re-set without the tag.
async fn tag_invalidation(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut cache = app.cache.clone();
    let entries: Vec<SetRequest> = (0..60)
        .map(|i| {
            let mut req = set(&format!("candle:{i}"), "v", MINUTE);
            req.tags = if i < 50 {
                vec!["btc".into(), "candles".into()]
            } else {
                vec!["eth".into()]
            };
            req
        })
        .collect();
    cache.set_many(SetManyRequest { entries }).await.unwrap();
    // Re-set without the tag: must survive invalidation of `btc`.
    do_set(&app, set("candle:0", "untagged now", MINUTE)).await;

    let result = cache
        .invalidate_tags(InvalidateTagsRequest {
            tags: vec!["btc".into(), "candles".into(), "never-used".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(result.invalidated, 49);
    for i in 1..50 {
        assert!(
            !do_get(&app, &format!("candle:{i}")).await.found,
            "candle:{i}"
        );
    }
    assert_eq!(value(&do_get(&app, "candle:0").await), b"untagged now");
    for i in 50..60 {
        assert!(
            do_get(&app, &format!("candle:{i}")).await.found,
            "candle:{i}"
        );
    }
    let again = cache
        .invalidate_tags(InvalidateTagsRequest {
            tags: vec!["btc".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.invalidated, 0);
}

/// 50 concurrent GetOrLease on a missing key: exactly one lease; the others
/// wait. The holder's Set lands and then everyone hits.
async fn one_lease_under_concurrency(backend: Backend) {
    let app = spawn_app(backend).await;
    let calls = (0..50).map(|_| {
        let app_cache = app.cache.clone();
        tokio::spawn(async move {
            let mut cache = app_cache;
            cache
                .get_or_lease(GetOrLeaseRequest {
                    key: "hot".into(),
                    lease_ttl: None,
                })
                .await
                .expect("get_or_lease answers")
                .into_inner()
        })
    });
    let answers: Vec<GetOrLeaseResponse> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .collect();
    let leased: Vec<&GetOrLeaseResponse> = answers
        .iter()
        .filter(|a| a.status == LeaseStatus::Leased as i32)
        .collect();
    assert_eq!(leased.len(), 1, "exactly one lease");
    assert_eq!(leased[0].lease_token.len(), 32);
    for waiting in answers
        .iter()
        .filter(|a| a.status != LeaseStatus::Leased as i32)
    {
        assert_eq!(waiting.status, LeaseStatus::Wait as i32);
        assert!(waiting.lease_token.is_empty());
        let retry = secs(&waiting.retry_after);
        assert!(retry > 0.0 && retry <= 0.1, "retry_after {retry}");
    }

    let mut fill = set("hot", "computed", MINUTE);
    fill.lease_token = leased[0].lease_token.clone();
    assert!(do_set(&app, fill.clone()).await.stored);
    let hit = lease(&app, "hot").await;
    assert_eq!(hit.status, LeaseStatus::Hit as i32);
    assert_eq!(hit.entry.unwrap().value.as_slice(), b"computed");
    // The lease is used up.
    let reused = do_set(&app, fill).await;
    assert_eq!(reused.outcome, SetOutcome::LeaseInvalid as i32);
}

/// A lease-holder's late Set is refused after a Delete, after an
/// invalidation of a tag it carries, and after another writer's Set.
async fn late_lease_writes_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut cache = app.cache.clone();

    // Delete voids the lease.
    let token = lease(&app, "a").await.lease_token;
    cache
        .delete(DeleteRequest { key: "a".into() })
        .await
        .unwrap();
    let mut late = set("a", "old data", MINUTE);
    late.lease_token = token;
    assert_eq!(
        do_set(&app, late).await.outcome,
        SetOutcome::LeaseInvalid as i32
    );
    assert!(!do_get(&app, "a").await.found);

    // InvalidateTags voids a lease for a value carrying the tag, even
    // though the entry did not exist when the tag was invalidated.
    let token = lease(&app, "b").await.lease_token;
    assert!(!token.is_empty());
    cache
        .invalidate_tags(InvalidateTagsRequest {
            tags: vec!["prices".into()],
        })
        .await
        .unwrap();
    let mut late = set("b", "computed before the invalidation", MINUTE);
    late.tags = vec!["prices".into()];
    late.lease_token = token;
    assert_eq!(
        do_set(&app, late).await.outcome,
        SetOutcome::LeaseInvalid as i32
    );
    assert!(!do_get(&app, "b").await.found);

    // Invalidating a tagged entry voids its outstanding lease.
    let mut tagged = set("c", "v1", Duration::from_millis(100));
    tagged.stale_ttl = Some(pb_duration(MINUTE));
    tagged.tags = vec!["prices".into()];
    do_set(&app, tagged).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let token = lease(&app, "c").await.lease_token;
    assert!(!token.is_empty(), "a stale entry is leased for refresh");
    let n = cache
        .invalidate_tags(InvalidateTagsRequest {
            tags: vec!["prices".into()],
        })
        .await
        .unwrap()
        .into_inner()
        .invalidated;
    assert_eq!(n, 1);
    let mut late = set("c", "v2", MINUTE);
    late.lease_token = token;
    assert_eq!(
        do_set(&app, late).await.outcome,
        SetOutcome::LeaseInvalid as i32
    );

    // Another writer's Set voids the lease: its value is newer.
    let token = lease(&app, "d").await.lease_token;
    do_set(&app, set("d", "fresh from elsewhere", MINUTE)).await;
    let mut late = set("d", "older", MINUTE);
    late.lease_token = token;
    assert_eq!(
        do_set(&app, late).await.outcome,
        SetOutcome::LeaseInvalid as i32
    );
    assert_eq!(value(&do_get(&app, "d").await), b"fresh from elsewhere");
}

/// A stale entry: the first caller gets the lease and the stale value, the
/// others the stale value without a lease.
async fn stale_entry_is_leased_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut req = set("s", "old", Duration::from_millis(100));
    req.stale_ttl = Some(pb_duration(MINUTE));
    do_set(&app, req).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let first = lease(&app, "s").await;
    assert_eq!(first.status, LeaseStatus::Leased as i32);
    assert_eq!(first.entry.as_ref().unwrap().value.as_slice(), b"old");
    assert!(first.entry.as_ref().unwrap().stale);
    let second = lease(&app, "s").await;
    assert_eq!(second.status, LeaseStatus::Stale as i32);
    assert_eq!(second.entry.as_ref().unwrap().value.as_slice(), b"old");
    assert!(second.lease_token.is_empty());
}

/// A lease expires: after its TTL another caller can take it.
async fn leases_expire(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut cache = app.cache.clone();
    let short = GetOrLeaseRequest {
        key: "e".into(),
        // Long enough that a loaded machine still asks twice within it.
        lease_ttl: Some(pb_duration(Duration::from_millis(600))),
    };
    let first = cache
        .get_or_lease(short.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.status, LeaseStatus::Leased as i32);
    let blocked = cache
        .get_or_lease(short.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(blocked.status, LeaseStatus::Wait as i32);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let second = cache.get_or_lease(short).await.unwrap().into_inner();
    assert_eq!(second.status, LeaseStatus::Leased as i32);
    assert_ne!(second.lease_token, first.lease_token);
    let mut late = set("e", "v", MINUTE);
    late.lease_token = first.lease_token;
    assert_eq!(
        do_set(&app, late).await.outcome,
        SetOutcome::LeaseInvalid as i32
    );
}

/// Each kind of bad input is INVALID_ARGUMENT naming the field.
async fn bad_input_names_the_field(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.cache.max_value_bytes = 1024).await;
    let mut c = app.cache.clone();
    assert_bad_field(c.get(GetRequest { key: String::new() }).await, "key");
    assert_bad_field(
        c.get(GetRequest {
            key: "k".repeat(513),
        })
        .await,
        "key",
    );
    assert_bad_field(c.set(set("", "v", MINUTE)).await, "key");
    let mut big = set("k", "", MINUTE);
    big.value = vec![0u8; 1025];
    assert_bad_field(c.set(big).await, "value");
    assert_bad_field(c.set(set("k", "v", Duration::ZERO)).await, "ttl");
    let mut no_ttl = set("k", "v", MINUTE);
    no_ttl.ttl = None;
    assert_bad_field(c.set(no_ttl).await, "ttl");
    let mut too_long = set("k", "v", MINUTE);
    too_long.ttl = Some(pb_duration(Duration::from_secs(31 * 24 * 3600)));
    assert_bad_field(c.set(too_long).await, "ttl");
    let mut negative = set("k", "v", MINUTE);
    negative.stale_ttl = Some(prost_types::Duration {
        seconds: -1,
        nanos: 0,
    });
    assert_bad_field(c.set(negative).await, "stale_ttl");
    let mut token = set("k", "v", MINUTE);
    token.lease_token = "not-a-token".into();
    assert_bad_field(c.set(token).await, "lease_token");
    let mut tags = set("k", "v", MINUTE);
    tags.tags = (0..17).map(|i| format!("t{i}")).collect();
    assert_bad_field(c.set(tags).await, "tags");
    let mut bad_tag = set("k", "v", MINUTE);
    bad_tag.tags = vec!["ok".into(), "new\nline".into()];
    assert_bad_field(c.set(bad_tag).await, "tags[1]");
    let mut huge = set("k", "v", MINUTE);
    huge.expected_version = Some(u64::MAX);
    assert_bad_field(c.set(huge).await, "expected_version");
    let mut condition = set("k", "v", MINUTE);
    condition.condition = 9;
    assert_bad_field(c.set(condition).await, "condition");
    assert_bad_field(c.get_many(GetManyRequest { keys: vec![] }).await, "keys");
    assert_bad_field(
        c.get_many(GetManyRequest {
            keys: (0..101).map(|i| i.to_string()).collect(),
        })
        .await,
        "keys",
    );
    assert_bad_field(
        c.get_many(GetManyRequest {
            keys: vec!["ok".into(), String::new()],
        })
        .await,
        "keys[1]",
    );
    assert_bad_field(
        c.set_many(SetManyRequest {
            entries: vec![set("ok", "v", MINUTE), set("k", "v", Duration::ZERO)],
        })
        .await,
        "entries[1].ttl",
    );
    assert_bad_field(
        c.invalidate_tags(InvalidateTagsRequest { tags: vec![] })
            .await,
        "tags",
    );
    assert_bad_field(
        c.invalidate_tags(InvalidateTagsRequest {
            tags: vec![String::new()],
        })
        .await,
        "tags[0]",
    );
    assert_bad_field(
        c.get_or_lease(GetOrLeaseRequest {
            key: "k".into(),
            lease_ttl: Some(pb_duration(Duration::from_secs(61))),
        })
        .await,
        "lease_ttl",
    );
    assert_bad_field(c.delete(DeleteRequest { key: String::new() }).await, "key");
    // Nothing was written by any of them.
    assert!(!do_get(&app, "k").await.found);
}

/// `cache.default_ttl` applies to a Set without a TTL.
async fn configured_default_ttl(backend: Backend) {
    let app = spawn_app_with(backend, |s| {
        s.cache.default_ttl = Some(Duration::from_secs(5));
    })
    .await;
    let mut req = set("k", "v", MINUTE);
    req.ttl = None;
    assert!(do_set(&app, req).await.stored);
    let entry = do_get(&app, "k").await.entry.unwrap();
    let ttl = secs(&entry.ttl);
    assert!(ttl > 4.0 && ttl <= 5.0, "ttl {ttl}");
}

conformance!(
    set_then_get_round_trips,
    entries_expire,
    stale_while_revalidate,
    conditional_writes,
    compare_and_set,
    delete_removes,
    batches_answer_in_order,
    tag_invalidation,
    one_lease_under_concurrency,
    late_lease_writes_are_refused,
    stale_entry_is_leased_once,
    leases_expire,
    bad_input_names_the_field,
    configured_default_ttl,
);

/// Every RPC, with tags, leases and a stale period (see `invariants`).
pub fn workload(app: &TestApp) -> futures::future::BoxFuture<'_, Result<(), tonic::Status>> {
    Box::pin(async move {
        use crate::harness::timed;
        let (key, tag) = (
            crate::invariants::fresh("w"),
            crate::invariants::fresh("tag"),
        );
        let mut client = app.cache.clone();
        let mut tagged = set(&key, "v", MINUTE);
        tagged.tags = vec![tag.clone()];
        tagged.stale_ttl = Some(pb_duration(MINUTE));
        client.set(timed(tagged)).await?;
        client.get(timed(GetRequest { key: key.clone() })).await?;
        let leased = crate::invariants::fresh("lease");
        client
            .get_or_lease(timed(GetOrLeaseRequest {
                key: leased.clone(),
                ..Default::default()
            }))
            .await?;
        client
            .set_many(timed(SetManyRequest {
                entries: vec![
                    set(&leased, "x", MINUTE),
                    set(&crate::invariants::fresh("m"), "y", MINUTE),
                ],
            }))
            .await?;
        client
            .get_many(timed(GetManyRequest {
                keys: vec![key.clone(), leased.clone()],
            }))
            .await?;
        let doomed = crate::invariants::fresh("doomed");
        let mut doomed_set = set(&doomed, "z", MINUTE);
        doomed_set.tags = vec![format!("{tag}-gone")];
        client.set(timed(doomed_set)).await?;
        client
            .invalidate_tags(timed(InvalidateTagsRequest {
                tags: vec![format!("{tag}-gone")],
            }))
            .await?;
        client.delete(timed(DeleteRequest { key: leased })).await?;
        Ok(())
    })
}
