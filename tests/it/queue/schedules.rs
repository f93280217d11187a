//! Cron schedules: each tick enqueues exactly one message, with three
//! replicas of the service on one Redis (or cluster) racing for it.

use std::collections::BTreeSet;
use std::time::Duration;

use datalayer::proto::datalayer::queue::v1 as pb;

use super::{client, lease, spec};
use crate::harness::{
    Backend, TestApp, assert_bad_field, spawn_app, spawn_app_with, timed, unique_namespace,
};

fn every_second(id: &str) -> pb::Schedule {
    pb::Schedule {
        id: id.into(),
        cron: "* * * * * *".into(),
        template: Some(spec("tick")),
        ..Default::default()
    }
}

/// Three replicas sharing one store: over about 3 s each second's tick
/// is enqueued once — no tick twice, none skipped.
async fn each_tick_fires_once_across_replicas(backend: Backend) {
    let namespace = unique_namespace("cron");
    let mut replicas: Vec<TestApp> = Vec::new();
    for _ in 0..3 {
        let ns = namespace.clone();
        replicas.push(
            spawn_app_with(backend, move |s| {
                s.keys.namespace = ns;
                s.queue.schedule_interval = Duration::from_millis(100);
            })
            .await,
        );
    }
    let app = &replicas[0];
    let made = client(app)
        .upsert_schedule(timed(pb::UpsertScheduleRequest {
            queue: "cron".into(),
            schedule: Some(every_second("s1")),
        }))
        .await
        .unwrap()
        .into_inner()
        .schedule
        .unwrap();
    assert!(made.next_run.is_some());
    tokio::time::sleep(Duration::from_millis(3500)).await;
    client(app)
        .delete_schedule(timed(pb::DeleteScheduleRequest {
            queue: "cron".into(),
            id: "s1".into(),
        }))
        .await
        .unwrap();
    let mut ticks = Vec::new();
    loop {
        let got = lease(app, "cron", 100, None).await;
        if got.is_empty() {
            break;
        }
        for m in got {
            assert_eq!(m.headers.get("schedule-id").map(String::as_str), Some("s1"));
            ticks.push(m.headers["schedule-tick"].parse::<u64>().unwrap());
        }
    }
    let distinct: BTreeSet<u64> = ticks.iter().copied().collect();
    assert_eq!(distinct.len(), ticks.len(), "a tick fired twice: {ticks:?}");
    assert!(ticks.len() >= 2, "ticks {ticks:?}");
    let sorted: Vec<u64> = distinct.into_iter().collect();
    for pair in sorted.windows(2) {
        assert_eq!(pair[1] - pair[0], 1000, "a tick was skipped: {sorted:?}");
    }
}

/// Schedules are listed with their next run; bad expressions, time zones
/// and templates are INVALID_ARGUMENT.
async fn schedules_are_listed_and_checked(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut c = client(&app);
    let mut daily = every_second("daily");
    daily.cron = "0 9 * * MON-FRI".into();
    daily.time_zone = "Europe/Paris".into();
    c.upsert_schedule(timed(pb::UpsertScheduleRequest {
        queue: "s".into(),
        schedule: Some(daily),
    }))
    .await
    .unwrap();
    let listed = c
        .list_schedules(timed(pb::ListSchedulesRequest { queue: "s".into() }))
        .await
        .unwrap()
        .into_inner()
        .schedules;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].cron.as_str(), listed[0].time_zone.as_str()),
        ("0 9 * * MON-FRI", "Europe/Paris")
    );
    let mut bad = every_second("x");
    bad.cron = "every day".into();
    bad.time_zone = "Mars/Olympus".into();
    let err = c
        .upsert_schedule(timed(pb::UpsertScheduleRequest {
            queue: "s".into(),
            schedule: Some(bad),
        }))
        .await;
    for field in ["schedule.cron", "schedule.time_zone"] {
        assert_bad_field(
            Err::<tonic::Response<()>, _>(err.as_ref().unwrap_err().clone()),
            field,
        );
    }
    let mut absolute = every_second("y");
    absolute.template.as_mut().unwrap().not_before = Some(prost_types::Timestamp {
        seconds: 1,
        nanos: 0,
    });
    assert_bad_field(
        c.upsert_schedule(timed(pb::UpsertScheduleRequest {
            queue: "s".into(),
            schedule: Some(absolute),
        }))
        .await,
        "schedule.template.not_before",
    );
    let deleted = c
        .delete_schedule(timed(pb::DeleteScheduleRequest {
            queue: "s".into(),
            id: "daily".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.deleted);
}

mod replicas_on_redis {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_tick_fires_once_across_replicas() {
        super::each_tick_fires_once_across_replicas(crate::harness::Backend::Redis).await;
    }
}

mod replicas_on_a_cluster {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_tick_fires_once_across_replicas() {
        super::each_tick_fires_once_across_replicas(crate::harness::Backend::Cluster).await;
    }
}

crate::conformance!(schedules_are_listed_and_checked);
