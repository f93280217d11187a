//! QueueService conformance on memory, Redis and a cluster: delivery and
//! acks, priorities, leases and their expiry, retries, dead letters
//! exactly once, dedup, delays, groups, credits, pause, cancel, bounds.
//! Schedules: `schedules.rs`; crashes of consumers, Redis and the service:
//! `crash.rs`.

mod crash;
mod flow;
mod full;
mod push;
mod schedules;

use std::collections::BTreeSet;
use std::time::Duration;

use datalayer::proto::datalayer::queue::v1::{
    self as pb, queue_service_client::QueueServiceClient,
};
use tonic::Code;

use crate::harness::{
    Backend, Channel, TestApp, assert_bad_field, pb_duration, spawn_app, spawn_app_with, timed,
};
use crate::invariants::fresh;

pub fn client(app: &TestApp) -> QueueServiceClient<Channel> {
    QueueServiceClient::new(app.channel.clone())
}

pub fn spec(payload: &str) -> pb::MessageSpec {
    pb::MessageSpec {
        payload: payload.as_bytes().to_vec(),
        ..Default::default()
    }
}

pub async fn enqueue(app: &TestApp, queue: &str, m: pb::MessageSpec) -> pb::EnqueueResponse {
    client(app)
        .enqueue(timed(pb::EnqueueRequest {
            queue: queue.into(),
            message: Some(m),
        }))
        .await
        .expect("enqueue answers")
        .into_inner()
}

pub async fn lease(
    app: &TestApp,
    queue: &str,
    max: u32,
    lease: Option<Duration>,
) -> Vec<pb::Message> {
    client(app)
        .lease(timed(pb::LeaseRequest {
            queue: queue.into(),
            max_messages: max,
            lease_duration: lease.map(pb_duration),
            wait: None,
        }))
        .await
        .expect("lease answers")
        .into_inner()
        .messages
}

pub async fn ack(app: &TestApp, queue: &str, m: &pb::Message) -> Result<(), tonic::Status> {
    client(app)
        .ack(timed(pb::AckRequest {
            queue: queue.into(),
            message_id: m.message_id.clone(),
            lease_token: m.lease_token.clone(),
        }))
        .await
        .map(|_| ())
}

pub async fn stats(app: &TestApp, queue: &str) -> pb::StatsResponse {
    client(app)
        .stats(timed(pb::StatsRequest {
            queue: queue.into(),
        }))
        .await
        .unwrap()
        .into_inner()
}

fn payloads(ms: &[pb::Message]) -> Vec<String> {
    ms.iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect()
}

/// A message comes back with its payload, headers and a lease; an ack
/// completes it, a second ack of the same lease is still fine, and it is
/// not delivered again.
async fn enqueue_lease_ack(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut m = spec("job-1");
    m.headers.insert("kind".into(), "rsi".into());
    let sent = enqueue(&app, "jobs", m).await;
    assert!(!sent.deduplicated && !sent.message_id.is_empty());
    let got = lease(&app, "jobs", 10, None).await;
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!(
        (m.message_id.as_str(), m.payload.as_slice()),
        (sent.message_id.as_str(), &b"job-1"[..])
    );
    assert_eq!(m.headers.get("kind").map(String::as_str), Some("rsi"));
    assert_eq!((m.attempt, m.max_attempts), (1, 5));
    assert!(m.lease_expires_at.is_some() && !m.lease_token.is_empty());
    ack(&app, "jobs", m).await.expect("ack");
    ack(&app, "jobs", m)
        .await
        .expect("a repeated ack of the same lease is fine");
    assert!(lease(&app, "jobs", 10, None).await.is_empty());
    let s = stats(&app, "jobs").await;
    assert_eq!(
        (s.enqueued_total, s.acked_total, s.waiting, s.leased),
        (1, 1, 0, 0)
    );
}

/// Higher priority first, FIFO within a priority.
async fn priority_then_fifo(backend: Backend) {
    let app = spawn_app(backend).await;
    for (p, prio) in [("a", 0), ("b", 0), ("c", 5), ("d", 5), ("e", 9)] {
        let mut m = spec(p);
        m.priority = prio;
        enqueue(&app, "q", m).await;
    }
    assert_eq!(
        payloads(&lease(&app, "q", 10, None).await),
        ["e", "c", "d", "a", "b"]
    );
}

/// 50 consumers leasing at once each get distinct messages: every message
/// is delivered exactly once while its lease holds.
async fn one_lease_per_message(backend: Backend) {
    let app = spawn_app(backend).await;
    let batch: Vec<pb::MessageSpec> = (0..200).map(|i| spec(&format!("m{i}"))).collect();
    for chunk in batch.chunks(100) {
        client(&app)
            .enqueue_batch(timed(pb::EnqueueBatchRequest {
                queue: "w".into(),
                messages: chunk.to_vec(),
                allow_partial: false,
            }))
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for i in 0..50 {
        let mut c = client(&app);
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let ms = c
                    .lease(timed(pb::LeaseRequest {
                        queue: "w".into(),
                        max_messages: 1 + i % 4,
                        ..Default::default()
                    }))
                    .await
                    .unwrap()
                    .into_inner()
                    .messages;
                if ms.is_empty() {
                    return got;
                }
                got.extend(ms.into_iter().map(|m| m.message_id));
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let distinct: BTreeSet<_> = all.iter().collect();
    assert_eq!(all.len(), 200, "every message once");
    assert_eq!(distinct.len(), 200, "no message twice");
}

/// A lease holds until it runs out; then the message is delivered again
/// (attempt 2), and the first lease's ack is refused as "lease lost".
async fn expired_leases_redeliver_and_fence(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut m = spec("x");
    // A lease that runs out is a failed delivery: retried after the
    // backoff, here none.
    m.backoff = Some(pb::Backoff {
        kind: Some(pb::backoff::Kind::Fixed(pb_duration(Duration::ZERO))),
    });
    enqueue(&app, "l", m).await;
    let first = lease(&app, "l", 1, Some(Duration::from_millis(300)))
        .await
        .remove(0);
    assert!(
        lease(&app, "l", 1, None).await.is_empty(),
        "not before the lease ends"
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    let second = lease(&app, "l", 1, None).await.remove(0);
    assert_eq!(
        (second.message_id.as_str(), second.attempt),
        (first.message_id.as_str(), 2)
    );
    let stale = ack(&app, "l", &first).await.unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition);
    assert!(stale.message().contains("lease lost"), "{stale:?}");
    ack(&app, "l", &second)
        .await
        .expect("the current lease acks");
}

/// ExtendLease keeps a message past its first lease.
async fn extend_keeps_the_lease(backend: Backend) {
    let app = spawn_app(backend).await;
    enqueue(&app, "e", spec("x")).await;
    let m = lease(&app, "e", 1, Some(Duration::from_millis(300)))
        .await
        .remove(0);
    tokio::time::sleep(Duration::from_millis(150)).await;
    client(&app)
        .extend_lease(timed(pb::ExtendLeaseRequest {
            queue: "e".into(),
            message_id: m.message_id.clone(),
            lease_token: m.lease_token.clone(),
            lease_duration: Some(pb_duration(Duration::from_secs(10))),
        }))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(lease(&app, "e", 1, None).await.is_empty(), "still leased");
    ack(&app, "e", &m).await.unwrap();
}

/// Nack retries after the backoff; after max_attempts the message is dead,
/// once; redrive brings it back with fresh attempts; purge deletes it.
async fn retries_then_dead_letters_exactly_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut m = spec("flaky");
    m.max_attempts = 3;
    m.backoff = Some(pb::Backoff {
        kind: Some(pb::backoff::Kind::Fixed(pb_duration(
            Duration::from_millis(50),
        ))),
    });
    let id = enqueue(&app, "r", m).await.message_id;
    let mut attempts = Vec::new();
    let mut dead = false;
    for _ in 0..50 {
        let Some(m) = lease(&app, "r", 1, None).await.pop() else {
            tokio::time::sleep(Duration::from_millis(30)).await;
            continue;
        };
        attempts.push(m.attempt);
        let answer = client(&app)
            .nack(timed(pb::NackRequest {
                queue: "r".into(),
                message_id: m.message_id,
                lease_token: m.lease_token,
                reason: format!("failed {}", m.attempt),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        if answer.dead {
            dead = true;
            break;
        }
    }
    assert!(dead, "attempts {attempts:?}");
    assert_eq!(attempts, [1, 2, 3]);
    let listed = client(&app)
        .list_dead(timed(pb::ListDeadRequest {
            queue: "r".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .messages;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].message.as_ref().unwrap().message_id, id);
    assert_eq!(listed[0].reason, "failed 3");
    let s = stats(&app, "r").await;
    assert_eq!((s.dead, s.dead_total, s.retried_total), (1, 1, 2));

    let redriven = client(&app)
        .redrive_dead(timed(pb::RedriveDeadRequest {
            queue: "r".into(),
            message_ids: vec![],
        }))
        .await
        .unwrap()
        .into_inner()
        .redriven;
    assert_eq!(redriven, 1);
    let again = lease(&app, "r", 1, None).await.remove(0);
    assert_eq!(again.attempt, 1, "a redrive gives fresh attempts");
    client(&app)
        .nack(timed(pb::NackRequest {
            queue: "r".into(),
            message_id: again.message_id,
            lease_token: again.lease_token,
            dead_letter: true,
            ..Default::default()
        }))
        .await
        .unwrap();
    let purged = client(&app)
        .purge_dead(timed(pb::PurgeDeadRequest {
            queue: "r".into(),
            message_ids: vec![],
        }))
        .await
        .unwrap()
        .into_inner()
        .purged;
    assert_eq!(purged, 1);
    assert_eq!(stats(&app, "r").await.dead, 0);
}

/// Consumers that crash (leases run out) use attempts up; 10 consumers
/// polling as the leases expire see the message die once, never more.
async fn crashed_deliveries_count_and_die_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut m = spec("poison");
    m.max_attempts = 2;
    m.backoff = Some(pb::Backoff {
        kind: Some(pb::backoff::Kind::Fixed(pb_duration(Duration::ZERO))),
    });
    m.lease_duration = Some(pb_duration(Duration::from_millis(200)));
    enqueue(&app, "c", m).await;
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let mut c = client(&app);
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let until = tokio::time::Instant::now() + Duration::from_millis(1200);
            while tokio::time::Instant::now() < until {
                let got = c
                    .lease(timed(pb::LeaseRequest {
                        queue: "c".into(),
                        max_messages: 1,
                        ..Default::default()
                    }))
                    .await
                    .unwrap()
                    .into_inner()
                    .messages;
                // "Crash": never ack.
                seen.extend(got.into_iter().map(|m| m.attempt));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            seen
        }));
    }
    let mut attempts = Vec::new();
    for t in tasks {
        attempts.extend(t.await.unwrap());
    }
    attempts.sort();
    assert_eq!(attempts, [1, 2], "two deliveries, each counted");
    let s = stats(&app, "c").await;
    assert_eq!((s.dead, s.dead_total), (1, 1), "dead exactly once");
}

/// A duplicate dedup_id inside the window answers the first id.
async fn dedup_within_the_window(backend: Backend) {
    let app = spawn_app(backend).await;
    let with = |id: &str| {
        let mut m = spec("order");
        m.dedup_id = id.into();
        m.dedup_window = Some(pb_duration(Duration::from_millis(300)));
        m
    };
    let first = enqueue(&app, "d", with("order-7")).await;
    let again = enqueue(&app, "d", with("order-7")).await;
    assert!(again.deduplicated);
    assert_eq!(again.message_id, first.message_id);
    let other = enqueue(&app, "d", with("order-8")).await;
    assert!(!other.deduplicated);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let later = enqueue(&app, "d", with("order-7")).await;
    assert!(!later.deduplicated && later.message_id != first.message_id);
    assert_eq!(stats(&app, "d").await.waiting, 3);
}

/// A delayed message is not delivered before its time; a long-poll gets it
/// when it is due.
async fn delays_hold_messages_back(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut m = spec("later");
    m.delay = Some(pb_duration(Duration::from_millis(300)));
    enqueue(&app, "t", m).await;
    assert!(lease(&app, "t", 1, None).await.is_empty(), "not yet");
    assert_eq!(stats(&app, "t").await.delayed, 1);
    let mut request = tonic::Request::new(pb::LeaseRequest {
        queue: "t".into(),
        max_messages: 1,
        wait: Some(pb_duration(Duration::from_secs(3))),
        ..Default::default()
    });
    request.set_timeout(Duration::from_secs(5));
    let got = client(&app)
        .lease(request)
        .await
        .unwrap()
        .into_inner()
        .messages;
    assert_eq!(payloads(&got), ["later"]);
}

crate::conformance!(
    enqueue_lease_ack,
    priority_then_fifo,
    one_lease_per_message,
    expired_leases_redeliver_and_fence,
    extend_keeps_the_lease,
    retries_then_dead_letters_exactly_once,
    crashed_deliveries_count_and_die_once,
    dedup_within_the_window,
    delays_hold_messages_back,
);

/// Bad input names its fields.
#[tokio::test]
async fn bad_input_names_every_field() {
    let app = spawn_app(Backend::Memory).await;
    let mut c = client(&app);
    let mut m = spec("");
    m.priority = 12;
    m.max_attempts = 100_000;
    m.headers.insert("bad name".into(), "v".into());
    m.payload = vec![0; 2 * 1024 * 1024];
    m.backoff = Some(pb::Backoff {
        kind: Some(pb::backoff::Kind::Fixed(pb_duration(Duration::from_secs(
            3 * 86_400,
        )))),
    });
    let err = c
        .enqueue(timed(pb::EnqueueRequest {
            queue: "bad queue".into(),
            message: Some(m),
        }))
        .await;
    for field in [
        "queue",
        "message.priority",
        "message.max_attempts",
        "message.headers",
        "message.payload",
        "message.backoff.fixed",
    ] {
        assert_bad_field(
            Err::<tonic::Response<()>, _>(err.as_ref().unwrap_err().clone()),
            field,
        );
    }
    assert_bad_field(
        c.enqueue(timed(pb::EnqueueRequest {
            queue: "q".into(),
            message: None,
        }))
        .await,
        "message",
    );
    assert_bad_field(
        c.lease(timed(pb::LeaseRequest {
            queue: "q".into(),
            max_messages: 100_000,
            wait: Some(pb_duration(Duration::from_secs(3600))),
            ..Default::default()
        }))
        .await,
        "wait",
    );
    assert_bad_field(
        c.ack(timed(pb::AckRequest {
            queue: "q".into(),
            message_id: "abc".into(),
            lease_token: String::new(),
        }))
        .await,
        "lease_token",
    );
    assert_bad_field(
        c.list_dead(timed(pb::ListDeadRequest {
            queue: "q".into(),
            limit: 1,
            cursor: "x".into(),
        }))
        .await,
        "cursor",
    );
    let full = spawn_app_with(Backend::Memory, |s| s.queue.max_messages = 2).await;
    enqueue(&full, "f", spec("1")).await;
    enqueue(&full, "f", spec("2")).await;
    let refused = client(&full)
        .enqueue(timed(pb::EnqueueRequest {
            queue: "f".into(),
            message: Some(spec("3")),
        }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
}

/// Every RPC of QueueService (see `invariants`).
pub fn workload(app: &TestApp) -> futures::future::BoxFuture<'_, Result<(), tonic::Status>> {
    Box::pin(async move {
        let mut c = client(app);
        let q = fresh("wq");
        let mut m = spec("w");
        m.dedup_id = fresh("d");
        m.group_key = "g".into();
        c.enqueue(timed(pb::EnqueueRequest {
            queue: q.clone(),
            message: Some(m),
        }))
        .await?;
        let mut delayed = spec("later");
        delayed.delay = Some(pb_duration(Duration::from_secs(60)));
        c.enqueue_batch(timed(pb::EnqueueBatchRequest {
            queue: q.clone(),
            messages: vec![delayed, spec("x")],
            allow_partial: false,
        }))
        .await?;
        let got = c
            .lease(timed(pb::LeaseRequest {
                queue: q.clone(),
                max_messages: 2,
                ..Default::default()
            }))
            .await?
            .into_inner()
            .messages;
        if let [a, b, ..] = got.as_slice() {
            c.extend_lease(timed(pb::ExtendLeaseRequest {
                queue: q.clone(),
                message_id: a.message_id.clone(),
                lease_token: a.lease_token.clone(),
                lease_duration: Some(pb_duration(Duration::from_secs(30))),
            }))
            .await?;
            c.ack(timed(pb::AckRequest {
                queue: q.clone(),
                message_id: a.message_id.clone(),
                lease_token: a.lease_token.clone(),
            }))
            .await?;
            c.nack(timed(pb::NackRequest {
                queue: q.clone(),
                message_id: b.message_id.clone(),
                lease_token: b.lease_token.clone(),
                dead_letter: true,
                ..Default::default()
            }))
            .await?;
        }
        c.list_dead(timed(pb::ListDeadRequest {
            queue: q.clone(),
            ..Default::default()
        }))
        .await?;
        c.redrive_dead(timed(pb::RedriveDeadRequest {
            queue: q.clone(),
            message_ids: vec![],
        }))
        .await?;
        c.purge_dead(timed(pb::PurgeDeadRequest {
            queue: q.clone(),
            message_ids: vec![],
        }))
        .await?;
        let id = c
            .enqueue(timed(pb::EnqueueRequest {
                queue: q.clone(),
                message: Some(spec("c")),
            }))
            .await?
            .into_inner()
            .message_id;
        c.cancel(timed(pb::CancelRequest {
            queue: q.clone(),
            message_id: id,
        }))
        .await?;
        c.pause(timed(pb::PauseRequest { queue: q.clone() }))
            .await?;
        c.resume(timed(pb::ResumeRequest { queue: q.clone() }))
            .await?;
        c.stats(timed(pb::StatsRequest { queue: q.clone() }))
            .await?;
        let schedule = pb::Schedule {
            id: "s".into(),
            cron: "0 0 1 1 *".into(),
            template: Some(spec("tick")),
            ..Default::default()
        };
        c.upsert_schedule(timed(pb::UpsertScheduleRequest {
            queue: q.clone(),
            schedule: Some(schedule),
        }))
        .await?;
        c.list_schedules(timed(pb::ListSchedulesRequest { queue: q.clone() }))
            .await?;
        c.delete_schedule(timed(pb::DeleteScheduleRequest {
            queue: q.clone(),
            id: "s".into(),
        }))
        .await?;
        let start = pb::ConsumeRequest {
            kind: Some(pb::consume_request::Kind::Start(
                pb::consume_request::Start {
                    queue: q,
                    credits: 1,
                    lease_duration: None,
                },
            )),
        };
        c.consume(timed(futures::stream::iter(vec![start]))).await?;
        Ok(())
    })
}
