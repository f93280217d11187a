//! Tenant isolation. Through the registration list, for every service: the
//! workload run as tenant A writes only A's keys and leaves every key of
//! tenant B exactly as it was. Then, per service, what B can see of data A
//! wrote under the same names: nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use datalayer::proto::datalayer::{
    audit::v1 as audit, cache::v1 as cache, flags::v1 as flags, ratelimit::v1 as rl,
    session::v1 as session, state::v1 as state,
};
use tonic::Code;

use super::{key, require};
use crate::harness::{Backend, TestApp, pb_duration, spawn_app_with, timed, unique_namespace};
use crate::invariants::workloads;

/// Every key of `namespace` with its serialized value.
fn snapshot(app: &TestApp, namespace: &str) -> BTreeMap<String, String> {
    let pattern = format!("dl:{namespace}:*");
    let keys = match app.backend {
        Backend::Cluster => crate::harness::shared_cluster().keys(&pattern),
        _ => app.redis().keys(&pattern),
    };
    keys.into_iter()
        .map(|k| {
            let dump = match app.backend {
                Backend::Cluster => {
                    let cluster = crate::harness::shared_cluster();
                    cluster.nodes[cluster.index_for(&k)].cmd(&["DUMP", &k])
                }
                _ => app.redis().cmd(&["DUMP", &k]),
            };
            (k, dump)
        })
        .collect()
}

async fn workloads_stay_in_their_tenant(backend: Backend) {
    let (a_ns, b_ns) = (unique_namespace("ta"), unique_namespace("tb"));
    let (a, a_spec) = key("a", &a_ns, &["*"]);
    let (b, b_spec) = key("b", &b_ns, &["*"]);
    let app = spawn_app_with(backend, |s| require(s, &[&a_spec, &b_spec])).await;
    let (as_a, as_b) = (app.as_key(&a, &a_ns), app.as_key(&b, &b_ns));
    for (service, workload) in workloads() {
        workload(&as_b)
            .await
            .unwrap_or_else(|e| panic!("{service} as B: {e:?}"));
    }
    // Flag changes reach the other replicas' caches within a second.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = snapshot(&app, &b_ns);
    assert!(!before.is_empty());
    for (service, workload) in workloads() {
        workload(&as_a)
            .await
            .unwrap_or_else(|e| panic!("{service} as A: {e:?}"));
        // B's keys may expire meanwhile (workloads write short TTLs); none
        // may appear or change.
        let after = snapshot(&app, &b_ns);
        for (k, dump) in &after {
            if dump.starts_with("$-1") {
                continue;
            }
            assert_eq!(
                before.get(k),
                Some(dump),
                "{service} as A wrote tenant B's key {k}"
            );
        }
    }
    for k in snapshot(&app, &a_ns).keys() {
        assert!(k.starts_with(&format!("dl:{a_ns}:")));
    }
    let default_ns = format!("dl:{}:", app.namespace);
    let strays = match backend {
        Backend::Cluster => crate::harness::shared_cluster().keys(&format!("{default_ns}*")),
        _ => app.redis().keys(&format!("{default_ns}*")),
    };
    assert!(
        strays.is_empty(),
        "keys outside the callers' tenants: {strays:?}"
    );
}

/// What A wrote under a name, B does not see under the same name, and B's
/// changes under that name leave A's data alone.
async fn a_tenant_sees_nothing_of_another(backend: Backend) {
    let (a_ns, b_ns) = (unique_namespace("ta"), unique_namespace("tb"));
    let (a, a_spec) = key("a", &a_ns, &["*"]);
    let (b, b_spec) = key("b", &b_ns, &["*"]);
    let app = spawn_app_with(backend, |s| require(s, &[&a_spec, &b_spec])).await;
    let (as_a, as_b) = (app.as_key(&a, &a_ns), app.as_key(&b, &b_ns));

    // Cache.
    let entry = cache::SetRequest {
        key: "shared".into(),
        value: b"a's".to_vec(),
        ttl: Some(pb_duration(Duration::from_secs(60))),
        ..Default::default()
    };
    as_a.cache.clone().set(timed(entry)).await.unwrap();
    let seen = as_b
        .cache
        .clone()
        .get(timed(cache::GetRequest {
            key: "shared".into(),
        }))
        .await;
    assert!(!seen.unwrap().into_inner().found, "cache");

    // State.
    let doc = state::PutRequest {
        collection: "users".into(),
        key: "u1".into(),
        value: b"{}".to_vec(),
        ..Default::default()
    };
    let mut sa = crate::state::client(&as_a);
    let mut sb = crate::state::client(&as_b);
    sa.put(timed(doc)).await.unwrap();
    let got = sb
        .get(timed(state::GetRequest {
            collection: "users".into(),
            key: "u1".into(),
            json_pointer: String::new(),
        }))
        .await
        .unwrap();
    assert!(!got.into_inner().found, "state");
    let count = sb
        .count(timed(state::CountRequest {
            collection: "users".into(),
        }))
        .await
        .unwrap();
    assert_eq!(count.into_inner().count, 0, "state count");

    // Sessions.
    let created = as_a
        .sessions
        .clone()
        .create(timed(session::CreateRequest {
            user_id: "u1".into(),
            idle_ttl: Some(pb_duration(Duration::from_secs(60))),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let listed = as_b
        .sessions
        .clone()
        .list_user_sessions(timed(session::ListUserSessionsRequest {
            user_id: "u1".into(),
        }))
        .await
        .unwrap();
    assert!(listed.into_inner().sessions.is_empty(), "sessions");
    let revoked = as_b
        .sessions
        .clone()
        .revoke_user_sessions(timed(session::RevokeUserSessionsRequest {
            user_id: "u1".into(),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(revoked.into_inner().revoked, 0);
    let by_token = as_b
        .sessions
        .clone()
        .get(timed(session::GetRequest {
            token: created.token.clone(),
            ..Default::default()
        }))
        .await;
    assert_eq!(
        by_token.unwrap_err().code(),
        Code::NotFound,
        "another tenant's token"
    );
    let still = as_a
        .sessions
        .clone()
        .get(timed(session::GetRequest {
            token: created.token,
            ..Default::default()
        }))
        .await;
    assert!(still.is_ok(), "A's session survives B's revocations");

    // Flags.
    let definition = r#"{"state":"ENABLED","variants":{"on":true},"defaultVariant":"on"}"#;
    let mut fa = crate::flags::admin(&as_a);
    let mut fb = crate::flags::admin(&as_b);
    fa.put(timed(flags::PutRequest {
        flag_set: "bots".into(),
        key: "f".into(),
        definition: definition.into(),
        expected_version: None,
    }))
    .await
    .unwrap();
    let flag = fb
        .get(timed(flags::GetRequest {
            flag_set: "bots".into(),
            key: "f".into(),
        }))
        .await;
    assert_eq!(flag.unwrap_err().code(), Code::NotFound, "flags");
    let evaluated = crate::flags::flagd(&as_b)
        .resolve_boolean(timed(
            datalayer::proto::flagd::evaluation::v1::ResolveBooleanRequest {
                flag_key: "f".into(),
                context: None,
            },
        ))
        .await;
    assert_eq!(
        evaluated.unwrap_err().code(),
        Code::NotFound,
        "flag evaluation"
    );

    // Rate limits: B's budget under the same key is untouched by A's use.
    let check = || rl::CheckRequest {
        reserve: false,
        key: "caller".into(),
        limit_source: Some(rl::check_request::LimitSource::Policy("auth".into())),
        cost: None,
    };
    for _ in 0..5 {
        as_a.ratelimit.clone().check(timed(check())).await.unwrap();
    }
    let a_over = as_a.ratelimit.clone().check(timed(check())).await.unwrap();
    assert!(!a_over.into_inner().allowed);
    let b_first = as_b.ratelimit.clone().check(timed(check())).await.unwrap();
    assert!(b_first.into_inner().allowed, "ratelimit");

    // Audit: A's reset is in A's log, not B's.
    as_a.ratelimit
        .clone()
        .reset(timed(rl::ResetRequest {
            key: "caller".into(),
            limit_source: Some(rl::reset_request::LimitSource::Policy("auth".into())),
        }))
        .await
        .unwrap();
    let list = |view: &TestApp| {
        let channel = view.channel.clone();
        async move {
            audit::audit_service_client::AuditServiceClient::new(channel)
                .list(timed(audit::ListRequest::default()))
                .await
                .unwrap()
                .into_inner()
                .events
        }
    };
    let mut seen_by_a = Vec::new();
    for _ in 0..50 {
        seen_by_a = list(&as_a).await;
        if seen_by_a.iter().any(|e| e.method.ends_with("/Reset")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        seen_by_a
            .iter()
            .any(|e| e.method.ends_with("/Reset") && e.principal == "a")
    );
    assert!(
        list(&as_b).await.iter().all(|e| e.principal == "b"),
        "audit"
    );
}

mod keys_on_redis {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn workloads_stay_in_their_tenant() {
        super::workloads_stay_in_their_tenant(crate::harness::Backend::Redis).await;
    }
}

mod keys_on_a_cluster {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn workloads_stay_in_their_tenant() {
        super::workloads_stay_in_their_tenant(crate::harness::Backend::Cluster).await;
    }
}

crate::conformance!(a_tenant_sees_nothing_of_another);
