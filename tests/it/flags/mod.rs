//! Feature flags: FlagService (writes, compare-and-set, validation that
//! points into the JSON, audit, watch) and flagd's evaluation protocol
//! (reasons, types, fractional buckets, sem_ver, $ref, EventStream), on
//! memory, Redis and a cluster. Replicas and Redis outages: `replicas.rs`.
//! The flagd-testbed scenarios run with the published providers in
//! tests/e2e/flagd.

mod replicas;

use std::time::Duration;

use datalayer::proto::datalayer::flags::v1::{self as pb, flag_service_client::FlagServiceClient};
use datalayer::proto::flagd::evaluation::v1::{
    self as flagd, service_client::ServiceClient as FlagdClient,
};
use futures::StreamExt;
use prost_types::{Struct, Value as PbValue, value::Kind};
use tonic::Code;

use crate::harness::{Backend, TestApp, assert_bad_field, spawn_app, timed};
use crate::invariants::fresh;

pub fn admin(app: &TestApp) -> FlagServiceClient<crate::harness::Channel> {
    FlagServiceClient::new(app.channel.clone())
}

pub fn flagd(app: &TestApp) -> FlagdClient<crate::harness::Channel> {
    FlagdClient::new(app.channel.clone())
}

pub fn context(pairs: &[(&str, &str)]) -> Option<Struct> {
    Some(Struct {
        fields: pairs
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    PbValue {
                        kind: Some(Kind::StringValue(v.to_string())),
                    },
                )
            })
            .collect(),
    })
}

/// A request carrying a `flagd-selector`.
pub fn selected<T>(set: &str, message: T) -> tonic::Request<T> {
    let mut request = timed(message);
    request
        .metadata_mut()
        .insert("flagd-selector", set.parse().expect("ascii"));
    request
}

const TARGETED: &str = r#"{"state":"ENABLED","variants":{"on":true,"off":false},"defaultVariant":"off","targeting":{"if":[{"==":[{"var":"email"},"a@b.c"]},"on",null]}}"#;

pub async fn put(app: &TestApp, set: &str, key: &str, definition: &str) -> pb::PutResponse {
    admin(app)
        .put(pb::PutRequest {
            flag_set: set.into(),
            key: key.into(),
            definition: definition.into(),
            expected_version: None,
        })
        .await
        .expect("put")
        .into_inner()
}

/// Every RPC of FlagService, and an evaluation (see `invariants`).
pub fn workload(app: &TestApp) -> futures::future::BoxFuture<'_, Result<(), tonic::Status>> {
    Box::pin(async move {
        let set = fresh("set");
        let mut client = admin(app);
        client
            .put(timed(pb::PutRequest {
                flag_set: set.clone(),
                key: "f".into(),
                definition: TARGETED.into(),
                expected_version: Some(0),
            }))
            .await?;
        client
            .patch(timed(pb::PatchRequest {
                flag_set: set.clone(),
                key: "f".into(),
                merge_patch: r#"{"metadata":{"team":"risk"}}"#.into(),
                expected_version: None,
            }))
            .await?;
        client
            .set_state(timed(pb::SetStateRequest {
                flag_set: set.clone(),
                key: "f".into(),
                state: pb::State::Disabled as i32,
                expected_version: None,
            }))
            .await?;
        client
            .import(timed(pb::ImportRequest {
                flag_set: set.clone(),
                document:
                    r#"{"flags":{"g":{"state":"ENABLED","variants":{"a":1},"defaultVariant":"a"}}}"#
                        .into(),
                replace: false,
            }))
            .await?;
        client
            .get(timed(pb::GetRequest {
                flag_set: set.clone(),
                key: "g".into(),
            }))
            .await?;
        client
            .list(timed(pb::ListRequest {
                flag_set: set.clone(),
                ..Default::default()
            }))
            .await?;
        client
            .export(timed(pb::ExportRequest {
                flag_set: set.clone(),
            }))
            .await?;
        client
            .list_audit(timed(pb::ListAuditRequest {
                flag_set: set.clone(),
                ..Default::default()
            }))
            .await?;
        client
            .list_flag_sets(timed(pb::ListFlagSetsRequest {}))
            .await?;
        client
            .delete(timed(pb::DeleteRequest {
                flag_set: set.clone(),
                key: "g".into(),
                expected_version: None,
            }))
            .await?;
        flagd(app)
            .resolve_boolean(selected(
                &set,
                flagd::ResolveBooleanRequest {
                    flag_key: "f".into(),
                    context: context(&[("email", "a@b.c")]),
                },
            ))
            .await?;
        Ok(())
    })
}

async fn writes_are_compare_and_set_and_versioned(backend: Backend) {
    let app = spawn_app(backend).await;
    let set = fresh("set");
    let mut client = admin(&app);
    let put = |expected| pb::PutRequest {
        flag_set: set.clone(),
        key: "f".into(),
        definition: TARGETED.into(),
        expected_version: expected,
    };
    let first = client.put(put(Some(0))).await.unwrap().into_inner();
    assert!(first.written && first.version > 0);
    let again = client.put(put(Some(0))).await.unwrap().into_inner();
    assert_eq!(
        (again.written, again.version),
        (false, first.version),
        "0 means must not exist"
    );
    let stale = client
        .put(put(Some(first.version + 7)))
        .await
        .unwrap()
        .into_inner();
    assert!(!stale.written);
    let second = client
        .put(put(Some(first.version)))
        .await
        .unwrap()
        .into_inner();
    assert!(
        second.written && second.version > first.version,
        "versions only grow"
    );
    let got = client
        .get(pb::GetRequest {
            flag_set: set.clone(),
            key: "f".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .flag
        .unwrap();
    assert_eq!(got.version, second.version);
    let stored: serde_json::Value = serde_json::from_str(&got.definition).unwrap();
    assert_eq!(
        stored,
        serde_json::from_str::<serde_json::Value>(TARGETED).unwrap()
    );
    let not_yet = client
        .delete(pb::DeleteRequest {
            flag_set: set.clone(),
            key: "f".into(),
            expected_version: Some(first.version),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!not_yet.deleted, "a stale version deletes nothing");
    let deleted = client
        .delete(pb::DeleteRequest {
            flag_set: set.clone(),
            key: "f".into(),
            expected_version: Some(second.version),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.deleted);
    let gone = client
        .get(pb::GetRequest {
            flag_set: set,
            key: "f".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
}

async fn problems_point_into_the_json(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = admin(&app);
    let bad = |definition: &str| pb::PutRequest {
        flag_set: "s".into(),
        key: "f".into(),
        definition: definition.into(),
        expected_version: None,
    };
    assert_bad_field(
        client.put(bad(r#"{"state":"ENABLED","variants":{"on":true},"defaultVariant":"on","targeting":{"if":[{"nope":[1]},"on",null]}}"#)).await,
        "definition.targeting.if[0]",
    );
    assert_bad_field(
        client
            .put(bad(r#"{"state":"ON","variants":{"a":1}}"#))
            .await,
        "definition.state",
    );
    assert_bad_field(
        client
            .put(bad(
                r#"{"state":"ENABLED","variants":{"a":1},"defaultVariant":"b"}"#,
            ))
            .await,
        "definition.defaultVariant",
    );
    assert_bad_field(client.put(bad("not json")).await, "definition");
    assert_bad_field(
        client
            .put(bad(&format!(
                r#"{{"state":"ENABLED","variants":{{"a":"{}"}}}}"#,
                "x".repeat(70_000)
            )))
            .await,
        "definition",
    );
    let import = client
        .import(pb::ImportRequest {
            flag_set: "s".into(),
            document: r#"{"flags":{"good":{"state":"ENABLED","variants":{"a":1}},"bad":{"state":"ENABLED","variants":{"a":1},"defaultVariant":"z"}}}"#.into(),
            replace: false,
        })
        .await;
    assert_bad_field(import, "document.flags.bad.defaultVariant");
    let mut no_key = pb::PutRequest {
        key: String::new(),
        ..bad(TARGETED)
    };
    no_key.flag_set = String::new();
    let status = client.put(no_key).await.unwrap_err();
    let fields: Vec<String> = tonic_types::StatusExt::get_details_bad_request(&status)
        .unwrap()
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(fields, ["flag_set", "key"], "every bad field at once");
}

async fn evaluation_follows_flagd(backend: Backend) {
    let app = spawn_app(backend).await;
    let set = fresh("set");
    put(&app, &set, "f", TARGETED).await;
    let resolve = |email: &str| {
        let mut client = flagd(&app);
        let request = selected(
            &set,
            flagd::ResolveBooleanRequest {
                flag_key: "f".into(),
                context: context(&[("email", email)]),
            },
        );
        async move { client.resolve_boolean(request).await }
    };
    let hit = resolve("a@b.c").await.unwrap().into_inner();
    assert_eq!(
        (hit.value, hit.reason.as_str(), hit.variant.as_str()),
        (true, "TARGETING_MATCH", "on")
    );
    let miss = resolve("x@y.z").await.unwrap().into_inner();
    assert_eq!((miss.value, miss.reason.as_str()), (false, "DEFAULT"));
    let wrong_type = flagd(&app)
        .resolve_string(selected(
            &set,
            flagd::ResolveStringRequest {
                flag_key: "f".into(),
                context: None,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(wrong_type.code(), Code::InvalidArgument, "TYPE_MISMATCH");
    let missing = flagd(&app)
        .resolve_boolean(selected(
            &set,
            flagd::ResolveBooleanRequest {
                flag_key: "nope".into(),
                context: None,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    // The kill switch: DISABLED, an empty variant (the caller's default).
    admin(&app)
        .set_state(pb::SetStateRequest {
            flag_set: set.clone(),
            key: "f".into(),
            state: pb::State::Disabled as i32,
            expected_version: None,
        })
        .await
        .unwrap();
    let off = resolve("a@b.c").await.unwrap().into_inner();
    assert_eq!(
        (off.reason.as_str(), off.variant.as_str()),
        ("DISABLED", "")
    );
}

async fn refs_semver_and_explain(backend: Backend) {
    let app = spawn_app(backend).await;
    let set = fresh("set");
    let doc = r#"{
      "$evaluators": {"is_beta": {"sem_ver": [{"var": "version"}, ">=", "2.0.0"]}},
      "metadata": {"team": "bots"},
      "flags": {
        "beta": {"state": "ENABLED", "variants": {"yes": "yes", "no": "no"}, "defaultVariant": "no",
                 "targeting": {"if": [{"$ref": "is_beta"}, "yes", "no"]}}
      }
    }"#;
    admin(&app)
        .import(pb::ImportRequest {
            flag_set: set.clone(),
            document: doc.into(),
            replace: true,
        })
        .await
        .unwrap();
    for (version, expected) in [
        ("2.0.0", "yes"),
        ("v2.1", "yes"),
        ("2", "yes"),
        ("1.9.9", "no"),
        ("2.0.0-rc.1", "no"),
        ("2.0.0+build", "yes"),
        ("bogus", "no"),
    ] {
        let answer = flagd(&app)
            .resolve_string(selected(
                &set,
                flagd::ResolveStringRequest {
                    flag_key: "beta".into(),
                    context: context(&[("version", version)]),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.value, expected, "version {version}");
        let team = answer.metadata.unwrap().fields["team"].clone();
        assert_eq!(
            team.kind,
            Some(Kind::StringValue("bots".into())),
            "flag set metadata"
        );
    }
    let explained = admin(&app)
        .explain(pb::ExplainRequest {
            flag_set: set.clone(),
            key: "beta".into(),
            context: context(&[("version", "3.0.0")]),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (explained.variant.as_str(), explained.matched.as_str()),
        ("yes", "targeting.if[0] held")
    );
    let exported = admin(&app)
        .export(pb::ExportRequest { flag_set: set })
        .await
        .unwrap()
        .into_inner();
    let exported: serde_json::Value = serde_json::from_str(&exported.document).unwrap();
    assert!(exported["$evaluators"]["is_beta"].is_object(), "{exported}");
}

async fn fractional_splits_by_weight(backend: Backend) {
    let app = spawn_app(backend).await;
    let set = fresh("set");
    put(&app, &set, "split", r#"{"state":"ENABLED","variants":{"a":"a","b":"b","c":"c"},"defaultVariant":"a","targeting":{"fractional":[["a",10],["b",30],["c",60]]}}"#).await;
    let mut counts = std::collections::HashMap::new();
    let calls = (0..10_000).map(|i| {
        let mut client = flagd(&app);
        let mut request = tonic::Request::new(flagd::ResolveStringRequest {
            flag_key: "split".into(),
            context: context(&[("targetingKey", &format!("account-{i}"))]),
        });
        request
            .metadata_mut()
            .insert("flagd-selector", set.parse().unwrap());
        async move {
            client
                .resolve_string(request)
                .await
                .unwrap()
                .into_inner()
                .value
        }
    });
    for value in futures::stream::iter(calls)
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
    {
        *counts.entry(value).or_insert(0u32) += 1;
    }
    for (variant, weight) in [("a", 10.0), ("b", 30.0), ("c", 60.0)] {
        let share = f64::from(counts[variant]) / 100.0;
        assert!(
            (share - weight).abs() <= 2.0,
            "{variant}: {share}% for weight {weight}%"
        );
    }
    // The same key always lands in the same bucket.
    let explain = |key: &str| {
        let mut client = admin(&app);
        let request = pb::ExplainRequest {
            flag_set: set.clone(),
            key: "split".into(),
            context: context(&[("targetingKey", key)]),
        };
        async move { client.explain(request).await.unwrap().into_inner() }
    };
    let (one, two) = (explain("account-7").await, explain("account-7").await);
    assert_eq!(one.fractional, two.fractional);
    assert_eq!(one.fractional[0].total_weight, 100);
}

async fn event_stream_says_ready_then_changes(backend: Backend) {
    let app = spawn_app(backend).await;
    let set = fresh("set");
    put(&app, &set, "f", TARGETED).await;
    let mut mine = flagd(&app)
        .event_stream(selected(&set, flagd::EventStreamRequest {}))
        .await
        .unwrap()
        .into_inner();
    let mut other = flagd(&app)
        .event_stream(selected("another-set", flagd::EventStreamRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mine.next().await.unwrap().unwrap().r#type, "provider_ready");
    assert_eq!(
        other.next().await.unwrap().unwrap().r#type,
        "provider_ready"
    );
    put(&app, &set, "g", TARGETED).await;
    let change = tokio::time::timeout(Duration::from_secs(5), mine.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(change.r#type, "configuration_change");
    let flags = &change.data.unwrap().fields["flags"];
    let Some(Kind::StructValue(flags)) = &flags.kind else {
        panic!("{flags:?}")
    };
    let Some(Kind::StructValue(g)) = &flags.fields["g"].kind else {
        panic!()
    };
    assert_eq!(
        g.fields["type"].kind,
        Some(Kind::StringValue("write".into()))
    );
    // A stream of another selector hears nothing of it.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), other.next())
            .await
            .is_err()
    );
}

async fn audit_and_watch_record_every_change(backend: Backend) {
    let app = spawn_app(backend).await;
    let set = fresh("set");
    let mut watch = admin(&app)
        .watch(pb::WatchRequest {
            flag_set: set.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    put(&app, &set, "f", TARGETED).await;
    admin(&app)
        .patch(pb::PatchRequest {
            flag_set: set.clone(),
            key: "f".into(),
            merge_patch: r#"{"defaultVariant":"on"}"#.into(),
            expected_version: None,
        })
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let second = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (first.r#type, second.r#type),
        (pb::ChangeType::Write as i32, pb::ChangeType::Update as i32)
    );
    assert!(second.version > first.version);
    let audit = admin(&app)
        .list_audit(pb::ListAuditRequest {
            flag_set: set,
            limit: 10,
            before: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let actions: Vec<&str> = audit.entries.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["patch", "put"], "newest first");
    assert!(audit.entries[0].after.contains("\"defaultVariant\":\"on\""));
    assert_eq!(audit.entries[0].before, audit.entries[1].after);
}

conformance!(
    writes_are_compare_and_set_and_versioned,
    problems_point_into_the_json,
    evaluation_follows_flagd,
    refs_semver_and_explain,
    fractional_splits_by_weight,
    event_stream_says_ready_then_changes,
    audit_and_watch_record_every_change,
);
