//! What every registered service must uphold, checked for each through the
//! registration list: each service's test module provides a `workload`
//! (calls that write what the service writes), and a service without one
//! fails [`every_registered_service_has_a_workload`].
//!
//! * every key is in a space the service declared (or the audit log's),
//!   and carries a bounded TTL unless that space is durable;
//! * scripts survive `SCRIPT FLUSH`;
//! * Redis down → `UNAVAILABLE` within the deadline → back by itself.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use tonic::Code;

use crate::harness::{Backend, TestApp, spawn_app};

/// Calls that exercise a service; each run uses fresh keys.
pub type Workload = for<'a> fn(&'a TestApp) -> BoxFuture<'a, Result<(), tonic::Status>>;

/// Every service's workload, by its registered name.
#[allow(clippy::vec_init_then_push)]
pub fn workloads() -> Vec<(&'static str, Workload)> {
    let mut all: Vec<(&'static str, Workload)> = Vec::new();
    all.push(("ratelimit", crate::ratelimit::workload));
    all.push(("cache", crate::cache::workload));
    all.push(("session", crate::session::workload));
    all.push(("flags", crate::flags::workload));
    all.push(("state", crate::state::workload));
    all.push(("queue", crate::queue::workload));
    all.push(("leaderboard", crate::leaderboard::workload));
    all.push(("topic", crate::topic::workload));
    all.push(("analytics", crate::analytics::workload));
    all.push(("audit", crate::audit::workload));
    #[cfg(feature = "echo")]
    all.push(("echo", crate::echo::workload));
    all
}

/// A short random suffix, so reruns of a workload write new keys.
pub fn fresh(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        datalayer::random::hex(6).expect("randomness")
    )
}

/// Longest TTL any expiring key may carry: three years and a day (the
/// longest analytics retention, `days(1098)`, plus its bucket).
const MAX_TTL_MS: i64 = 1130 * 24 * 3600 * 1000;

#[test]
fn every_registered_service_has_a_workload() {
    let registered: BTreeSet<&str> = datalayer::services::names().into_iter().collect();
    let covered: BTreeSet<&str> = workloads().into_iter().map(|(name, _)| name).collect();
    assert_eq!(
        registered, covered,
        "every service in services/mod.rs needs a workload in tests/it/invariants.rs"
    );
}

#[test]
fn key_spaces_are_unique_across_services() {
    let spaces = datalayer::services::key_spaces();
    let mut seen = BTreeSet::new();
    for (service, space) in &spaces {
        assert!(
            seen.insert(space.name),
            "{service}: key space `{}` is taken",
            space.name
        );
    }
}

fn check_keys(app: &TestApp, service: &str) {
    let spaces = datalayer::services::key_spaces();
    let keys = app.keys();
    assert!(!keys.is_empty(), "{service}: the workload wrote no key");
    for key in keys {
        let space = key
            .strip_prefix(&format!("dl:{}:", app.namespace))
            .and_then(|rest| rest.split(':').next())
            .unwrap_or_else(|| panic!("{service}: `{key}` is not dl:<tenant>:<space>:..."));
        let (owner, declared) = spaces
            .iter()
            .find(|(_, s)| s.name == space)
            .unwrap_or_else(|| panic!("{service}: `{key}` is in no registered key space"));
        // Any service's administrative calls land in the audit log.
        assert!(
            *owner == service || *owner == "audit",
            "`{key}` is in {owner}'s space"
        );
        let ttl = match app.backend {
            Backend::Cluster => {
                let cluster = crate::harness::shared_cluster();
                cluster.nodes[cluster.index_for(&key)].pttl(&key)
            }
            _ => app.redis().pttl(&key),
        };
        // Gone since the scan (a queue's list emptied by a lease still in
        // flight): nothing left that could outlive its data.
        if ttl == -2 {
            continue;
        }
        if declared.caller_ttl {
            assert!(
                ttl == -1 || (ttl > 0 && ttl <= MAX_TTL_MS),
                "{service}: `{key}` has PTTL {ttl} (durable, or bounded when asked)"
            );
        } else if declared.durable {
            assert_eq!(ttl, -1, "{service}: durable `{key}` has a TTL of {ttl} ms");
        } else {
            assert!(
                ttl > 0 && ttl <= MAX_TTL_MS,
                "{service}: `{key}` has PTTL {ttl} (must be bounded)"
            );
        }
    }
}

async fn every_key_has_a_bounded_ttl_unless_durable(backend: Backend) {
    for (service, workload) in workloads() {
        let app = spawn_app(backend).await;
        workload(&app)
            .await
            .unwrap_or_else(|e| panic!("{service}: {e:?}"));
        check_keys(&app, service);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_has_a_bounded_ttl_unless_durable_on_redis() {
    every_key_has_a_bounded_ttl_unless_durable(Backend::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_has_a_bounded_ttl_unless_durable_on_a_cluster() {
    every_key_has_a_bounded_ttl_unless_durable(Backend::Cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_survive_script_flush() {
    let app = spawn_app(Backend::OwnRedis).await;
    for (service, workload) in workloads() {
        workload(&app)
            .await
            .unwrap_or_else(|e| panic!("{service}: {e:?}"));
        assert!(app.redis().cmd(&["SCRIPT", "FLUSH"]).starts_with("+OK"));
        workload(&app)
            .await
            .unwrap_or_else(|e| panic!("{service} after SCRIPT FLUSH: {e:?}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_is_unavailable_within_the_deadline_then_back_by_itself() {
    let mut app = spawn_app(Backend::OwnRedis).await;
    for (service, workload) in workloads() {
        workload(&app)
            .await
            .unwrap_or_else(|e| panic!("{service}: {e:?}"));
    }
    app.own_redis().kill();
    for (service, workload) in workloads() {
        let started = Instant::now();
        let error = workload(&app)
            .await
            .expect_err("calls fail while Redis is down");
        // The clients' deadlines are 1 s; the answer comes before them.
        assert_eq!(error.code(), Code::Unavailable, "{service}: {error:?}");
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{service}: answered after {:?}",
            started.elapsed()
        );
    }
    app.own_redis().restart();
    for (service, workload) in workloads() {
        let started = Instant::now();
        loop {
            match workload(&app).await {
                Ok(()) => break,
                Err(e) => assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "{service} never recovered: {e:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
