//! StateService conformance on memory, Redis and a cluster: documents
//! (versions, compare-and-set, merge patches, JSON pointers, pages under
//! concurrent writes, expiry, bounds), the change stream, counters and
//! bad input. Locks: `locks.rs`.

mod locks;
mod watch;

use std::collections::BTreeSet;
use std::time::Duration;

use crate::harness::Channel;
use datalayer::proto::datalayer::state::v1::{
    self as pb, state_service_client::StateServiceClient,
};
use serde_json::{Value, json};
use tonic::Code;

use crate::harness::{
    Backend, TestApp, assert_bad_field, pb_duration, spawn_app, spawn_app_with, timed,
};
use crate::invariants::fresh;

pub fn client(app: &TestApp) -> StateServiceClient<Channel> {
    StateServiceClient::new(app.channel.clone())
}

pub fn put_req(collection: &str, key: &str, value: &[u8]) -> pb::PutRequest {
    pb::PutRequest {
        collection: collection.into(),
        key: key.into(),
        value: value.to_vec(),
        content_type: "application/json".into(),
        ..Default::default()
    }
}

pub async fn put(app: &TestApp, req: pb::PutRequest) -> pb::PutResponse {
    client(app)
        .put(timed(req))
        .await
        .expect("put answers")
        .into_inner()
}

pub async fn get(app: &TestApp, collection: &str, key: &str, pointer: &str) -> pb::GetResponse {
    client(app)
        .get(timed(pb::GetRequest {
            collection: collection.into(),
            key: key.into(),
            json_pointer: pointer.into(),
        }))
        .await
        .expect("get answers")
        .into_inner()
}

fn json_of(r: &pb::GetResponse) -> Value {
    serde_json::from_slice(&r.document.as_ref().expect("a document").value).expect("JSON")
}

fn patch_req(collection: &str, key: &str, patch: Value) -> pb::PatchRequest {
    pb::PatchRequest {
        collection: collection.into(),
        key: key.into(),
        merge_patch: patch.to_string().into_bytes(),
        create: true,
        ..Default::default()
    }
}

/// A Put is read back with its value, content type and version; durable
/// documents have no TTL; an absent key is `found: false`.
async fn put_then_get_round_trips(backend: Backend) {
    let app = spawn_app(backend).await;
    let written = put(&app, put_req("users", "u:1", br#"{"tz":"UTC"}"#)).await;
    assert!(written.written);
    assert!(written.version > 0);
    let got = get(&app, "users", "u:1", "").await;
    assert!(got.found);
    let doc = got.document.as_ref().unwrap();
    assert_eq!(doc.value, br#"{"tz":"UTC"}"#);
    assert_eq!(doc.content_type, "application/json");
    assert_eq!(doc.version, written.version);
    assert_eq!(
        (doc.collection.as_str(), doc.key.as_str()),
        ("users", "u:1")
    );
    assert!(doc.ttl.is_none(), "durable: no TTL");
    let missing = get(&app, "users", "u:2", "").await;
    assert!(!missing.found && missing.document.is_none());

    let many = client(&app)
        .get_many(timed(pb::GetManyRequest {
            collection: "users".into(),
            keys: vec!["u:2".into(), "u:1".into()],
        }))
        .await
        .unwrap()
        .into_inner();
    let found: Vec<bool> = many.documents.iter().map(|d| d.found).collect();
    assert_eq!(found, [false, true]);
}

/// Versions grow with every write, across a delete and re-creation;
/// `expected_version` makes writes and deletes compare-and-set, and a
/// refused one changes nothing.
async fn versions_grow_and_writes_compare_and_set(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut c = client(&app);
    let v1 = put(&app, put_req("s", "k", b"1")).await.version;
    let mut cas = put_req("s", "k", b"2");
    cas.expected_version = Some(v1 + 7);
    let refused = put(&app, cas.clone()).await;
    assert_eq!((refused.written, refused.version), (false, v1));
    cas.expected_version = Some(0);
    assert!(!put(&app, cas.clone()).await.written, "0 means absent only");
    assert_eq!(get(&app, "s", "k", "").await.document.unwrap().value, b"1");
    cas.expected_version = Some(v1);
    let v2 = put(&app, cas.clone()).await;
    assert!(v2.written && v2.version > v1);

    let delete = |expected| pb::DeleteRequest {
        collection: "s".into(),
        key: "k".into(),
        expected_version: expected,
    };
    let wrong = c
        .delete(timed(delete(Some(v1))))
        .await
        .unwrap()
        .into_inner();
    assert!(!wrong.deleted);
    assert!(get(&app, "s", "k", "").await.found);
    assert!(
        c.delete(timed(delete(Some(v2.version))))
            .await
            .unwrap()
            .into_inner()
            .deleted
    );
    assert!(
        !c.delete(timed(delete(None)))
            .await
            .unwrap()
            .into_inner()
            .deleted
    );
    cas.expected_version = Some(0);
    let v3 = put(&app, cas).await;
    assert!(
        v3.written && v3.version > v2.version,
        "versions keep growing"
    );
}

/// 100 concurrent read-modify-write loops, each retrying on a version
/// conflict, lose no update.
async fn concurrent_compare_and_set_loops_lose_no_update(backend: Backend) {
    let app = spawn_app(backend).await;
    put(&app, put_req("acct", "balance", br#"{"n":0}"#)).await;
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let mut c = client(&app);
        tasks.push(tokio::spawn(async move {
            loop {
                let got = c
                    .get(timed(pb::GetRequest {
                        collection: "acct".into(),
                        key: "balance".into(),
                        json_pointer: String::new(),
                    }))
                    .await
                    .unwrap()
                    .into_inner();
                let doc = got.document.unwrap();
                let n = serde_json::from_slice::<Value>(&doc.value).unwrap()["n"]
                    .as_u64()
                    .unwrap();
                let mut req = put_req(
                    "acct",
                    "balance",
                    json!({ "n": n + 1 }).to_string().as_bytes(),
                );
                req.expected_version = Some(doc.version);
                if c.put(timed(req)).await.unwrap().into_inner().written {
                    return;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        json_of(&get(&app, "acct", "balance", "").await),
        json!({"n": 100})
    );
}

/// Merge patches of different fields, sent at once, all survive; a null
/// removes a field; the document keeps its content type.
async fn concurrent_merge_patches_keep_every_field(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut base = put_req("users", "u", br#"{"name":"ann","drop":1}"#);
    base.content_type = "application/vnd.bot+json".into();
    put(&app, base).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let mut c = client(&app);
        tasks.push(tokio::spawn(async move {
            let mut req = patch_req("users", "u", json!({ "fields": { format!("f{i}"): i } }));
            req.create = false;
            let mut request = tonic::Request::new(req);
            request.set_timeout(Duration::from_secs(10));
            c.patch(request).await.unwrap().into_inner()
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap().written);
    }
    let out = client(&app)
        .patch(timed(patch_req("users", "u", json!({"drop": null}))))
        .await
        .unwrap()
        .into_inner();
    let doc = out.document.unwrap();
    assert_eq!(doc.content_type, "application/vnd.bot+json");
    let value: Value = serde_json::from_slice(&doc.value).unwrap();
    assert_eq!(value["name"], "ann");
    assert!(value.get("drop").is_none());
    let fields = value["fields"].as_object().unwrap();
    assert_eq!(fields.len(), 50, "{value}");
    assert_eq!(json_of(&get(&app, "users", "u", "").await), value);
}

/// Patch: NOT_FOUND without `create`, an empty object with it; a version
/// mismatch answers the current document; a non-JSON document is
/// FAILED_PRECONDITION; a TTL survives a patch.
async fn patch_creates_checks_versions_and_keeps_expiry(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut c = client(&app);
    let mut req = patch_req("p", "new", json!({"a": 1}));
    req.create = false;
    assert_eq!(
        c.patch(timed(req.clone())).await.unwrap_err().code(),
        Code::NotFound
    );
    req.create = true;
    let created = c.patch(timed(req.clone())).await.unwrap().into_inner();
    let doc = created.document.unwrap();
    assert_eq!(
        (doc.content_type.as_str(), doc.value.as_slice()),
        ("application/json", &br#"{"a":1}"#[..])
    );

    req.expected_version = Some(doc.version + 100);
    let refused = c.patch(timed(req)).await.unwrap().into_inner();
    assert!(!refused.written);
    assert_eq!(refused.document.unwrap().version, doc.version);

    let mut plain = put_req("p", "text", b"not json");
    plain.content_type = "text/plain".into();
    put(&app, plain).await;
    let err = c
        .patch(timed(patch_req("p", "text", json!({"a": 1}))))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    let mut expiring = put_req("p", "ttl", b"{}");
    expiring.ttl = Some(pb_duration(Duration::from_secs(60)));
    put(&app, expiring).await;
    let patched = c
        .patch(timed(patch_req("p", "ttl", json!({"b": 2}))))
        .await
        .unwrap()
        .into_inner();
    let ttl = patched.document.unwrap().ttl.expect("still expires");
    assert!(ttl.seconds > 50 && ttl.seconds <= 60, "{ttl:?}");
    let stored_ttl = get(&app, "p", "ttl", "")
        .await
        .document
        .unwrap()
        .ttl
        .unwrap();
    assert!(stored_ttl.seconds > 50, "{stored_ttl:?}");
}

/// `json_pointer` reads one part of a JSON document; a path that is not
/// there is `found: false`; a non-JSON document is FAILED_PRECONDITION.
async fn json_pointer_reads_one_path(backend: Backend) {
    let app = spawn_app(backend).await;
    put(
        &app,
        put_req(
            "u",
            "1",
            br#"{"settings":{"tz":"Europe/Paris","alerts":[5,10]}}"#,
        ),
    )
    .await;
    let tz = get(&app, "u", "1", "/settings/tz").await;
    assert_eq!(json_of(&tz), json!("Europe/Paris"));
    assert_eq!(
        json_of(&get(&app, "u", "1", "/settings/alerts/1").await),
        json!(10)
    );
    assert!(!get(&app, "u", "1", "/settings/missing").await.found);
    put(&app, put_req("u", "bin", b"\xff\xfe")).await;
    let err = client(&app)
        .get(timed(pb::GetRequest {
            collection: "u".into(),
            key: "bin".into(),
            json_pointer: "/a".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
}

async fn list_page(
    app: &TestApp,
    prefix: &str,
    cursor: &str,
    limit: u32,
    values: bool,
) -> pb::ListResponse {
    client(app)
        .list(timed(pb::ListRequest {
            collection: "l".into(),
            prefix: prefix.into(),
            cursor: cursor.into(),
            limit,
            with_values: values,
        }))
        .await
        .expect("list answers")
        .into_inner()
}

/// List pages through a prefix in key order, with documents when asked,
/// and says when there is no more.
async fn list_pages_by_prefix(backend: Backend) {
    let app = spawn_app(backend).await;
    for i in 0..25 {
        put(
            &app,
            put_req("l", &format!("u:{i:02}"), format!("{i}").as_bytes()),
        )
        .await;
    }
    put(&app, put_req("l", "v:0", b"0")).await;
    put(&app, put_req("l", "t", b"0")).await;
    let (mut cursor, mut seen) = (String::new(), Vec::new());
    for page in 0.. {
        let got = list_page(&app, "u:", &cursor, 10, true).await;
        assert_eq!(got.keys.len(), got.documents.len());
        for (key, doc) in got.keys.iter().zip(&got.documents) {
            assert_eq!(&doc.key, key);
            let i: u32 = key[2..].parse().unwrap();
            assert_eq!(doc.value, i.to_string().as_bytes());
        }
        seen.extend(got.keys);
        cursor = got.next_cursor;
        if cursor.is_empty() {
            assert_eq!(page, 2);
            break;
        }
    }
    let want: Vec<String> = (0..25).map(|i| format!("u:{i:02}")).collect();
    assert_eq!(seen, want);
    let all = list_page(&app, "", "", 0, false).await;
    assert_eq!(all.keys.len(), 27);
    assert!(all.documents.is_empty());
    let count = client(&app)
        .count(timed(pb::CountRequest {
            collection: "l".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .count;
    assert_eq!(count, 27);
}

/// Paging while other keys are written and deleted returns every key that
/// stayed in place exactly once.
async fn list_under_concurrent_writes_returns_stable_keys_once(backend: Backend) {
    let app = spawn_app(backend).await;
    for i in 0..200 {
        put(&app, put_req("l", &format!("k{i:03}"), b"s")).await;
    }
    let churn = {
        let app_client = client(&app);
        tokio::spawn(async move {
            let mut c = app_client;
            for round in 0..400 {
                let key = format!("k{:03}-tmp", (round * 37) % 200);
                let _ = c.put(timed(put_req("l", &key, b"t"))).await;
                let _ = c
                    .delete(timed(pb::DeleteRequest {
                        collection: "l".into(),
                        key: format!("k{:03}-tmp", (round * 53) % 200),
                        expected_version: None,
                    }))
                    .await;
            }
        })
    };
    let mut stable = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = list_page(&app, "", &cursor, 7, false).await;
        stable.extend(page.keys.into_iter().filter(|k| !k.ends_with("-tmp")));
        cursor = page.next_cursor;
        if cursor.is_empty() {
            break;
        }
    }
    churn.await.unwrap();
    let want: Vec<String> = (0..200).map(|i| format!("k{i:03}")).collect();
    assert_eq!(stable, want);
}

/// A document given a TTL is gone after it, from Get, List and Count.
async fn documents_with_a_ttl_expire(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut short = put_req("e", "short", b"1");
    short.ttl = Some(pb_duration(Duration::from_millis(300)));
    put(&app, short).await;
    put(&app, put_req("e", "kept", b"1")).await;
    assert!(
        get(&app, "e", "short", "")
            .await
            .document
            .unwrap()
            .ttl
            .is_some()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!get(&app, "e", "short", "").await.found);
    let mut c = client(&app);
    let count = c
        .count(timed(pb::CountRequest {
            collection: "e".into(),
        }))
        .await
        .unwrap();
    assert_eq!(count.into_inner().count, 1);
    let listed = c
        .list(timed(pb::ListRequest {
            collection: "e".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.keys, ["kept"]);
}

/// A collection at `state.max_docs_per_collection` refuses new keys
/// (RESOURCE_EXHAUSTED) but takes writes to existing ones.
async fn a_full_collection_refuses_new_keys(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.state.max_docs_per_collection = 3).await;
    for k in ["a", "b", "c"] {
        assert!(put(&app, put_req("f", k, b"1")).await.written);
    }
    let err = client(&app)
        .put(timed(put_req("f", "d", b"1")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        err.message().contains("state.max_docs_per_collection"),
        "{err:?}"
    );
    assert!(put(&app, put_req("f", "a", b"2")).await.written);
    assert!(put(&app, put_req("other", "d", b"1")).await.written);
}

/// 100 concurrent increments are exact; bounds refuse without changing
/// the counter; absent counters read 0.
async fn counters_are_exact_and_bounded(backend: Backend) {
    let app = spawn_app(backend).await;
    let inc = |delta, min, max| pb::IncrementRequest {
        collection: "ctr".into(),
        key: "hits".into(),
        delta,
        ttl: None,
        min,
        max,
    };
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let mut c = client(&app);
        let req = inc(1, None, None);
        tasks.push(tokio::spawn(async move {
            c.increment(timed(req)).await.unwrap().into_inner()
        }));
    }
    let mut values = BTreeSet::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert!(r.applied);
        values.insert(r.value);
    }
    assert_eq!(
        values,
        (1..=100).collect(),
        "every increment saw its own value"
    );
    let mut c = client(&app);
    let refused = c
        .increment(timed(inc(1, None, Some(100))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((refused.applied, refused.value), (false, 100));
    let refused = c
        .increment(timed(inc(-101, Some(0), None)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((refused.applied, refused.value), (false, 100));
    let ok = c
        .increment(timed(inc(-100, Some(0), None)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((ok.applied, ok.value), (true, 0));
    let read = c
        .get_counters(timed(pb::GetCountersRequest {
            collection: "ctr".into(),
            keys: vec!["hits".into(), "never".into()],
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.values, [0, 0]);
    let mut expiring = inc(5, None, None);
    expiring.key = "short".into();
    expiring.ttl = Some(pb_duration(Duration::from_millis(200)));
    assert_eq!(
        c.increment(timed(expiring))
            .await
            .unwrap()
            .into_inner()
            .value,
        5
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let read = c
        .get_counters(timed(pb::GetCountersRequest {
            collection: "ctr".into(),
            keys: vec!["short".into()],
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.values, [0], "the counter expired");
}

/// Bad input is INVALID_ARGUMENT naming every bad field.
async fn bad_input_names_every_field(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut c = client(&app);
    let mut req = put_req("bad name!", "", &vec![0u8; 2 * 1024 * 1024]);
    req.ttl = Some(pb_duration(Duration::from_secs(400 * 86_400)));
    req.expected_version = Some(u64::MAX);
    let err = c.put(timed(req)).await;
    for field in ["collection", "key", "value", "ttl", "expected_version"] {
        assert_bad_field(
            Err::<tonic::Response<()>, _>(err.as_ref().unwrap_err().clone()),
            field,
        );
    }
    assert_bad_field(
        c.get(timed(pb::GetRequest {
            collection: "u".into(),
            key: "k".into(),
            json_pointer: "a/b".into(),
        }))
        .await,
        "json_pointer",
    );
    assert_bad_field(
        c.get(timed(pb::GetRequest {
            collection: "u".into(),
            key: "k\n".into(),
            json_pointer: String::new(),
        }))
        .await,
        "key",
    );
    let mut patch = patch_req("u", "k", json!({}));
    patch.merge_patch = b"{not json".to_vec();
    assert_bad_field(c.patch(timed(patch)).await, "merge_patch");
    assert_bad_field(
        c.get_many(timed(pb::GetManyRequest {
            collection: "u".into(),
            keys: vec![],
        }))
        .await,
        "keys",
    );
    assert_bad_field(
        c.get_many(timed(pb::GetManyRequest {
            collection: "u".into(),
            keys: vec!["ok".into(), String::new()],
        }))
        .await,
        "keys[1]",
    );
    assert_bad_field(
        c.list(timed(pb::ListRequest {
            collection: "u".into(),
            limit: 5000,
            ..Default::default()
        }))
        .await,
        "limit",
    );
    assert_bad_field(
        c.count(timed(pb::CountRequest {
            collection: String::new(),
        }))
        .await,
        "collection",
    );
    let inc = pb::IncrementRequest {
        collection: "u".into(),
        key: "k".into(),
        delta: i64::MIN,
        min: Some(5),
        max: Some(1),
        ttl: None,
    };
    let err = c.increment(timed(inc)).await;
    assert_bad_field(
        Err::<tonic::Response<()>, _>(err.as_ref().unwrap_err().clone()),
        "delta",
    );
    let inc = pb::IncrementRequest {
        collection: "u".into(),
        key: "k".into(),
        delta: 1,
        min: Some(5),
        max: Some(1),
        ttl: None,
    };
    assert_bad_field(c.increment(timed(inc)).await, "max");
    assert_bad_field(
        c.watch(timed(pb::WatchRequest {
            collection: "{x}".into(),
            prefix: String::new(),
        }))
        .await
        .map(|_| ())
        .map(tonic::Response::new),
        "collection",
    );
}

crate::conformance!(
    put_then_get_round_trips,
    versions_grow_and_writes_compare_and_set,
    concurrent_compare_and_set_loops_lose_no_update,
    concurrent_merge_patches_keep_every_field,
    patch_creates_checks_versions_and_keeps_expiry,
    json_pointer_reads_one_path,
    list_pages_by_prefix,
    list_under_concurrent_writes_returns_stable_keys_once,
    documents_with_a_ttl_expire,
    a_full_collection_refuses_new_keys,
    counters_are_exact_and_bounded,
    bad_input_names_every_field,
);

/// Every RPC of StateService (see `invariants`).
pub fn workload(app: &TestApp) -> futures::future::BoxFuture<'_, Result<(), tonic::Status>> {
    Box::pin(async move {
        let mut c = client(app);
        let coll = fresh("w");
        c.put(timed(put_req(&coll, "durable", b"{}"))).await?;
        let mut expiring = put_req(&coll, "expiring", b"{}");
        expiring.ttl = Some(pb_duration(Duration::from_secs(600)));
        c.put(timed(expiring)).await?;
        c.patch(timed(patch_req(&coll, "durable", json!({"a": 1}))))
            .await?;
        c.get(timed(pb::GetRequest {
            collection: coll.clone(),
            key: "durable".into(),
            json_pointer: "/a".into(),
        }))
        .await?;
        c.get_many(timed(pb::GetManyRequest {
            collection: coll.clone(),
            keys: vec!["durable".into(), "expiring".into()],
        }))
        .await?;
        c.list(timed(pb::ListRequest {
            collection: coll.clone(),
            with_values: true,
            ..Default::default()
        }))
        .await?;
        c.count(timed(pb::CountRequest {
            collection: coll.clone(),
        }))
        .await?;
        c.put(timed(put_req(&coll, "gone", b"1"))).await?;
        c.delete(timed(pb::DeleteRequest {
            collection: coll.clone(),
            key: "gone".into(),
            expected_version: None,
        }))
        .await?;
        let mut inc = pb::IncrementRequest {
            collection: coll.clone(),
            key: "n".into(),
            delta: 2,
            ..Default::default()
        };
        c.increment(timed(inc.clone())).await?;
        inc.key = "daily".into();
        inc.ttl = Some(pb_duration(Duration::from_secs(86_400)));
        c.increment(timed(inc)).await?;
        c.get_counters(timed(pb::GetCountersRequest {
            collection: coll.clone(),
            keys: vec!["n".into()],
        }))
        .await?;
        let lock = c
            .acquire_lock(timed(pb::AcquireLockRequest {
                name: coll.clone(),
                ttl: Some(pb_duration(Duration::from_secs(5))),
                wait: None,
            }))
            .await?
            .into_inner();
        c.renew_lock(timed(pb::RenewLockRequest {
            name: coll.clone(),
            lease_id: lock.lease_id.clone(),
            ttl: Some(pb_duration(Duration::from_secs(5))),
        }))
        .await?;
        c.release_lock(timed(pb::ReleaseLockRequest {
            name: coll.clone(),
            lease_id: lock.lease_id,
        }))
        .await?;
        c.watch(timed(pb::WatchRequest {
            collection: coll,
            prefix: String::new(),
        }))
        .await?;
        Ok(())
    })
}
