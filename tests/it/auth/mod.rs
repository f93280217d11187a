//! Who may call what: API keys (missing, wrong, malformed, expired,
//! rotated through a reloaded file), permissions, per-peer failure limits,
//! quotas, and tenant isolation for every registered service. TLS and
//! mTLS: `tls.rs`.

mod isolation;
mod tls;

use std::time::Duration;

use datalayer::auth::keys::{generate, sha256_hex};
use datalayer::auth::settings::{KeySpec, QuotaSpec};
use datalayer::config::Settings;
use datalayer::proto::datalayer::cache::v1::{GetRequest, SetRequest};
use datalayer::proto::datalayer::state::v1 as state;
use futures::StreamExt;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_types::StatusExt;

use crate::harness::{Backend, TestApp, pb_duration, spawn_app_with, timed};

/// A new key of `tenant` allowed `allow`, and its configuration entry.
pub fn key(id: &str, tenant: &str, allow: &[&str]) -> (String, KeySpec) {
    let (key, sha256) = generate().expect("randomness");
    let spec = KeySpec {
        id: id.to_owned(),
        sha256,
        tenant: tenant.to_owned(),
        allow: allow.iter().map(|a| a.to_string()).collect(),
        expires: None,
    };
    (key, spec)
}

pub fn require(settings: &mut Settings, keys: &[&KeySpec]) {
    settings.auth.required = true;
    settings.auth.keys = keys.iter().map(|k| (*k).clone()).collect();
}

fn set(key: &str) -> SetRequest {
    SetRequest {
        key: key.into(),
        value: b"v".to_vec(),
        ttl: Some(pb_duration(Duration::from_secs(60))),
        ..Default::default()
    }
}

async fn cache_get(app: &TestApp, key: &str) -> Result<bool, tonic::Status> {
    let reply = app
        .cache
        .clone()
        .get(timed(GetRequest { key: key.into() }))
        .await?;
    Ok(reply.into_inner().found)
}

/// No key, an unknown one, a malformed header and an expired key are each
/// UNAUTHENTICATED; health stays open; a good key works.
#[tokio::test]
async fn keys_are_required_and_checked() {
    let (good, good_spec) = key("bot", &crate::harness::unique_namespace("a"), &["*"]);
    let (old, mut old_spec) = key("old", "x", &["*"]);
    old_spec.expires = Some("2020-01-01T00:00:00Z".into());
    let app = spawn_app_with(Backend::Memory, |s| require(s, &[&good_spec, &old_spec])).await;

    let missing = cache_get(&app, "k").await.unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated);
    assert!(missing.message().contains("Bearer"), "{missing:?}");
    let unknown = cache_get(&app.as_key("dlk_nope", "x"), "k")
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::Unauthenticated);
    assert!(unknown.message().contains("unknown API key"));
    let hash_is_not_a_key = cache_get(&app.as_key(&good_spec.sha256, "x"), "k").await;
    assert_eq!(hash_is_not_a_key.unwrap_err().code(), Code::Unauthenticated);
    let expired = cache_get(&app.as_key(&old, "x"), "k").await.unwrap_err();
    assert_eq!(expired.code(), Code::Unauthenticated);
    assert!(expired.message().contains("expired"), "{expired:?}");

    let mut basic = tonic::Request::new(GetRequest { key: "k".into() });
    basic
        .metadata_mut()
        .insert("authorization", "Basic abc".parse().unwrap());
    let malformed = app.cache.clone().get(basic).await.unwrap_err();
    assert_eq!(malformed.code(), Code::Unauthenticated);

    let health = app
        .health
        .clone()
        .check(HealthCheckRequest::default())
        .await;
    assert!(health.is_ok(), "health is open by default: {health:?}");
    assert!(!cache_get(&app.as_key(&good, "x"), "k").await.unwrap());
}

/// A key may call only what it is allowed; the refusal names the method.
#[tokio::test]
async fn permissions_name_the_method() {
    let tenant = crate::harness::unique_namespace("p");
    let (reader, reader_spec) = key("reader", &tenant, &["read:datalayer.cache.*"]);
    let (stater, stater_spec) = key("stater", &tenant, &["datalayer.state.v1.StateService/*"]);
    let app = spawn_app_with(Backend::Memory, |s| {
        require(s, &[&reader_spec, &stater_spec])
    })
    .await;
    let reads = app.as_key(&reader, &tenant);
    assert!(cache_get(&reads, "k").await.is_ok());
    let denied = reads.cache.clone().set(timed(set("k"))).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(
        denied
            .message()
            .contains("datalayer.cache.v1.CacheService/Set")
            && denied.message().contains("reader"),
        "{denied:?}"
    );
    let states = app.as_key(&stater, &tenant);
    let mut c = crate::state::client(&states);
    c.count(timed(state::CountRequest {
        collection: "c".into(),
    }))
    .await
    .expect("allowed");
    let other = cache_get(&states, "k").await.unwrap_err();
    assert_eq!(other.code(), Code::PermissionDenied);
}

/// A peer that fails `auth.max_failures` times is refused, even with a
/// good key, until the window ends.
#[tokio::test]
async fn failed_authentications_block_the_peer() {
    let (good, spec) = key("bot", "blocked", &["*"]);
    let app = spawn_app_with(Backend::Memory, |s| {
        require(s, &[&spec]);
        s.auth.max_failures = 3;
        s.auth.failure_window = Duration::from_secs(2);
    })
    .await;
    for _ in 0..3 {
        let e = cache_get(&app.as_key("dlk_guess", "x"), "k")
            .await
            .unwrap_err();
        assert!(e.message().contains("unknown API key"));
    }
    let blocked = cache_get(&app.as_key(&good, "x"), "k").await.unwrap_err();
    assert_eq!(blocked.code(), Code::Unauthenticated);
    assert!(blocked.message().contains("too many failed"), "{blocked:?}");
    let probe = app
        .health
        .clone()
        .check(HealthCheckRequest::default())
        .await;
    assert!(
        probe.is_ok(),
        "health probes pass a blocked peer: {probe:?}"
    );
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert!(
        cache_get(&app.as_key(&good, "x"), "k").await.is_ok(),
        "the window ended"
    );
}

/// Keys in `auth.keys_file` are re-read when the file changes: a removed
/// key stops working within about `auth.reload_interval`, a new one starts;
/// a file that stops parsing keeps the keys in force.
#[tokio::test]
async fn the_keys_file_is_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.yaml");
    let (first, first_spec) = key("first", "reload", &["*"]);
    let (second, second_spec) = key("second", "reload", &["*"]);
    let write = |specs: &[&KeySpec]| {
        let mut text = String::from("keys:\n");
        for k in specs {
            text.push_str(&format!(
                "  - {{ id: {}, sha256: \"{}\", tenant: {} }}\n",
                k.id, k.sha256, k.tenant
            ));
        }
        std::fs::write(&file, text).unwrap();
    };
    write(&[&first_spec]);
    let path = file.clone();
    let app = spawn_app_with(Backend::Memory, move |s| {
        s.auth.required = true;
        s.auth.keys_file = Some(path);
        s.auth.reload_interval = Duration::from_millis(100);
    })
    .await;
    assert!(cache_get(&app.as_key(&first, "reload"), "k").await.is_ok());
    assert!(
        cache_get(&app.as_key(&second, "reload"), "k")
            .await
            .is_err()
    );

    write(&[&second_spec]);
    let started = std::time::Instant::now();
    while cache_get(&app.as_key(&first, "reload"), "k").await.is_ok() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the removed key still works"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(cache_get(&app.as_key(&second, "reload"), "k").await.is_ok());

    std::fs::write(&file, "keys: [ {{ not yaml").unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        cache_get(&app.as_key(&second, "reload"), "k").await.is_ok(),
        "a broken file keeps the keys in force"
    );
    assert_eq!(sha256_hex(&second), second_spec.sha256);
}

/// Over its calls-per-second quota a tenant gets RESOURCE_EXHAUSTED with
/// RetryInfo; over its stream quota, a new stream is refused until one ends.
#[tokio::test]
async fn quotas_refuse_with_retry_info() {
    let tenant = crate::harness::unique_namespace("q");
    let (k, spec) = key("quota", &tenant, &["*"]);
    let quota_tenant = tenant.clone();
    let app = spawn_app_with(Backend::Memory, move |s| {
        require(s, &[&spec]);
        s.auth.quotas.insert(
            quota_tenant,
            QuotaSpec {
                calls_per_second: 1,
                burst: 5,
                max_streams: 1,
            },
        );
    })
    .await;
    let view = app.as_key(&k, &tenant);
    let mut refused = None;
    for _ in 0..8 {
        if let Err(e) = cache_get(&view, "k").await {
            refused = Some(e);
            break;
        }
    }
    let refused = refused.expect("the burst of 5 runs out");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    let retry = refused.get_details_retry_info().expect("RetryInfo");
    assert!(retry.retry_delay.is_some_and(|d| d > Duration::ZERO));

    tokio::time::sleep(Duration::from_secs(2)).await;
    let watch =
        |c: &mut state::state_service_client::StateServiceClient<crate::harness::Channel>| {
            let mut c = c.clone();
            async move {
                c.watch(state::WatchRequest {
                    collection: "w".into(),
                    prefix: String::new(),
                })
                .await
            }
        };
    let mut c = crate::state::client(&view);
    let first = watch(&mut c).await.expect("one stream is allowed");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = watch(&mut c).await.unwrap_err();
    assert_eq!(second.code(), Code::ResourceExhausted, "{second:?}");
    assert!(second.message().contains("streams"));
    drop(first.into_inner().boxed());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(watch(&mut c).await.is_ok(), "the slot came back");
}

/// A flag change's audit entry names who made it: the key id, not the
/// tenant.
#[tokio::test]
async fn flag_audit_names_the_key_that_changed_it() {
    use datalayer::proto::datalayer::flags::v1::{
        self as fpb, flag_service_client::FlagServiceClient,
    };
    let tenant = crate::harness::unique_namespace("fa");
    let (secret, spec) = key("release-bot", &tenant, &["*"]);
    let app = spawn_app_with(Backend::Memory, |s| require(s, &[&spec])).await;
    let as_bot = app.as_key(&secret, &tenant);
    let mut flags = FlagServiceClient::new(as_bot.channel.clone());
    flags
        .put(timed(fpb::PutRequest {
            flag_set: "s".into(),
            key: "kill-switch".into(),
            definition:
                r#"{"state":"ENABLED","variants":{"on":true,"off":false},"defaultVariant":"off"}"#
                    .into(),
            ..Default::default()
        }))
        .await
        .unwrap();
    let audit = flags
        .list_audit(timed(fpb::ListAuditRequest {
            flag_set: "s".into(),
            limit: 10,
            before: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(audit.entries[0].actor, "release-bot");
}
