//! Flow control: groups (one at a time, FIFO across retries), Consume
//! credits, pause, cancel, long-polls woken by an enqueue, expiry.

use std::time::Duration;

use datalayer::proto::datalayer::queue::v1 as pb;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{ack, client, enqueue, lease, payloads, spec, stats};
use crate::harness::{Backend, pb_duration, spawn_app, timed};

fn grouped(payload: &str, group: &str) -> pb::MessageSpec {
    let mut m = spec(payload);
    m.group_key = group.into();
    m
}

/// One message of a group at a time, in order, even when the first is
/// retried; other groups go on meanwhile.
async fn groups_stay_in_order_across_retries(backend: Backend) {
    let app = spawn_app(backend).await;
    for (p, g) in [
        ("a1", "acct-a"),
        ("a2", "acct-a"),
        ("b1", "acct-b"),
        ("a3", "acct-a"),
    ] {
        enqueue(&app, "g", grouped(p, g)).await;
    }
    let first = lease(&app, "g", 10, None).await;
    assert_eq!(payloads(&first), ["a1", "b1"], "one per group");
    let a1 = first.iter().find(|m| m.payload == b"a1").unwrap().clone();
    client(&app)
        .nack(timed(pb::NackRequest {
            queue: "g".into(),
            message_id: a1.message_id.clone(),
            lease_token: a1.lease_token.clone(),
            retry_after: Some(pb_duration(Duration::from_millis(50))),
            ..Default::default()
        }))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let retried = lease(&app, "g", 10, None).await;
    assert_eq!(payloads(&retried), ["a1"], "a2 waits behind the retried a1");
    assert_eq!(retried[0].attempt, 2);
    ack(&app, "g", &retried[0]).await.unwrap();
    assert_eq!(payloads(&lease(&app, "g", 10, None).await), ["a2"]);
}

/// A Consume stream sends no more messages than the credits granted.
async fn consume_respects_credits(backend: Backend) {
    let app = spawn_app(backend).await;
    for i in 0..5 {
        enqueue(&app, "cr", spec(&format!("m{i}"))).await;
    }
    let (tx, rx) = mpsc::channel(4);
    tx.send(pb::ConsumeRequest {
        kind: Some(pb::consume_request::Kind::Start(
            pb::consume_request::Start {
                queue: "cr".into(),
                credits: 2,
                lease_duration: None,
            },
        )),
    })
    .await
    .unwrap();
    let mut stream = client(&app)
        .consume(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    for _ in 0..2 {
        let m = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        got.push(m.message.unwrap());
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(400), stream.next())
            .await
            .is_err(),
        "no message past the credits"
    );
    tx.send(pb::ConsumeRequest {
        kind: Some(pb::consume_request::Kind::Credit(1)),
    })
    .await
    .unwrap();
    let third = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    got.push(third.message.unwrap());
    assert_eq!(payloads(&got), ["m0", "m1", "m2"]);
    assert_eq!(stats(&app, "cr").await.leased, 3);
    for m in &got {
        ack(&app, "cr", m).await.unwrap();
    }
}

/// Acks on the stream: each is answered on the stream and gives its credit
/// back, so 20 messages flow through 5 credits with no credit message; a
/// stale lease token answers FAILED_PRECONDITION, a malformed id
/// INVALID_ARGUMENT, and the stream goes on.
async fn consume_acks_on_the_stream(backend: Backend) {
    let app = spawn_app(backend).await;
    for i in 0..20 {
        enqueue(&app, "sa", spec(&format!("m{i}"))).await;
    }
    let (tx, rx) = mpsc::channel(64);
    tx.send(pb::ConsumeRequest {
        kind: Some(pb::consume_request::Kind::Start(
            pb::consume_request::Start {
                queue: "sa".into(),
                credits: 5,
                lease_duration: None,
            },
        )),
    })
    .await
    .unwrap();
    let mut stream = client(&app)
        .consume(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let settle = |id: &str, token: &str| pb::ConsumeRequest {
        kind: Some(pb::consume_request::Kind::Ack(
            pb::consume_request::Settle {
                message_id: id.into(),
                lease_token: token.into(),
            },
        )),
    };
    let (mut delivered, mut acked) = (Vec::new(), Vec::new());
    let mut bad_sent = false;
    // Each ack sent gives a credit back, whatever its outcome.
    let mut acks_sent = 0;
    while acked.len() < 22 {
        let item = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("the stream goes on")
            .expect("open")
            .expect("no error");
        if let Some(m) = item.message {
            assert!(
                delivered.len() < 5 + acks_sent,
                "a message past the credits"
            );
            tx.send(settle(&m.message_id, &m.lease_token))
                .await
                .unwrap();
            acks_sent += 1;
            if !bad_sent {
                bad_sent = true;
                acks_sent += 2;
                tx.send(settle(&m.message_id, "0123456789abcdef0123456789abcdef"))
                    .await
                    .unwrap();
                tx.send(settle("not an id", "x")).await.unwrap();
            }
            delivered.push(m);
        } else if let Some(a) = item.acked {
            acked.push(a);
        }
    }
    assert_eq!(delivered.len(), 20);
    let ok = acked.iter().filter(|a| a.ok).count();
    assert_eq!(ok, 20, "{acked:?}");
    let codes: Vec<i32> = acked.iter().filter(|a| !a.ok).map(|a| a.code).collect();
    assert!(
        codes.contains(&(tonic::Code::FailedPrecondition as i32)),
        "{acked:?}"
    );
    assert!(
        codes.contains(&(tonic::Code::InvalidArgument as i32)),
        "{acked:?}"
    );
    let s = stats(&app, "sa").await;
    assert_eq!((s.waiting, s.leased), (0, 0));
}

/// A stream that leaves while its lease waits does not keep what that
/// lease finds: the message is ready again at once, its attempt not
/// counted (else it would wait out its 30 s lease).
async fn a_gone_consumer_gives_its_lease_back(backend: Backend) {
    let app = spawn_app(backend).await;
    let (tx, rx) = mpsc::channel(4);
    tx.send(pb::ConsumeRequest {
        kind: Some(pb::consume_request::Kind::Start(
            pb::consume_request::Start {
                queue: "gb".into(),
                credits: 5,
                lease_duration: None,
            },
        )),
    })
    .await
    .unwrap();
    let stream = client(&app)
        .consume(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    // The stream's lease is waiting now; the consumer leaves.
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(stream);
    drop(tx);
    tokio::time::sleep(Duration::from_millis(50)).await;
    enqueue(&app, "gb", spec("m")).await;
    let mut request = tonic::Request::new(pb::LeaseRequest {
        queue: "gb".into(),
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
    assert_eq!(
        payloads(&got),
        ["m"],
        "the message is not held by the gone stream"
    );
    assert_eq!(got[0].attempt, 1, "the undelivered lease took no attempt");
}

/// A paused queue delivers nothing (and takes enqueues); resumed, it does.
async fn pause_and_resume(backend: Backend) {
    let app = spawn_app(backend).await;
    enqueue(&app, "p", spec("x")).await;
    client(&app)
        .pause(timed(pb::PauseRequest { queue: "p".into() }))
        .await
        .unwrap();
    enqueue(&app, "p", spec("y")).await;
    assert!(lease(&app, "p", 10, None).await.is_empty());
    let s = stats(&app, "p").await;
    assert!(s.paused);
    assert_eq!(s.waiting, 2);
    client(&app)
        .resume(timed(pb::ResumeRequest { queue: "p".into() }))
        .await
        .unwrap();
    assert_eq!(payloads(&lease(&app, "p", 10, None).await), ["x", "y"]);
}

/// Cancel removes a waiting message, not a leased one.
async fn cancel_waiting_not_leased(backend: Backend) {
    let app = spawn_app(backend).await;
    let a = enqueue(&app, "k", spec("a")).await.message_id;
    let b = enqueue(&app, "k", spec("b")).await.message_id;
    let cancel = |id: String| {
        let mut c = client(&app);
        async move {
            c.cancel(timed(pb::CancelRequest {
                queue: "k".into(),
                message_id: id,
            }))
            .await
            .unwrap()
            .into_inner()
            .cancelled
        }
    };
    assert!(cancel(b).await);
    let leased = lease(&app, "k", 10, None).await;
    assert_eq!(payloads(&leased), ["a"]);
    assert!(!cancel(a).await, "leased: not cancelled");
    assert!(!cancel("999999".into()).await);
}

/// A long-poll returns the message enqueued while it waits.
async fn long_polls_wake_on_enqueue(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut c = client(&app);
    let waiting = tokio::spawn(async move {
        let mut request = tonic::Request::new(pb::LeaseRequest {
            queue: "lp".into(),
            max_messages: 1,
            wait: Some(pb_duration(Duration::from_secs(5))),
            ..Default::default()
        });
        request.set_timeout(Duration::from_secs(8));
        c.lease(request).await.unwrap().into_inner().messages
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    enqueue(&app, "lp", spec("wake")).await;
    assert_eq!(payloads(&waiting.await.unwrap()), ["wake"]);
}

/// A message past its expire_at is dropped, not delivered, and counted.
async fn expired_messages_are_dropped(backend: Backend) {
    let app = spawn_app(backend).await;
    let soon = std::time::SystemTime::now() + Duration::from_millis(150);
    let at = soon.duration_since(std::time::UNIX_EPOCH).unwrap();
    let mut m = spec("stale");
    m.expire_at = Some(prost_types::Timestamp {
        seconds: at.as_secs() as i64,
        nanos: at.subsec_nanos() as i32,
    });
    enqueue(&app, "x", m).await;
    enqueue(&app, "x", spec("fresh")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(payloads(&lease(&app, "x", 10, None).await), ["fresh"]);
    assert_eq!(stats(&app, "x").await.expired_total, 1);
}

crate::conformance!(
    groups_stay_in_order_across_retries,
    consume_respects_credits,
    consume_acks_on_the_stream,
    a_gone_consumer_gives_its_lease_back,
    pause_and_resume,
    cancel_waiting_not_leased,
    long_polls_wake_on_enqueue,
    expired_messages_are_dropped,
);

/// One enqueue wakes one of the long-polls waiting on its queue, not all of
/// them: each woken waiter runs a lease script, so waking 20 for one
/// message would cost 20 scripts that find nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_enqueue_wakes_one_waiter_not_all() {
    let mut app = crate::harness::spawn_app_with(Backend::OwnRedis, |s| {
        // Waiters look again only when woken.
        s.queue.poll_interval = Duration::from_secs(10);
    })
    .await;
    let mut waiters = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let mut c = client(&app);
        waiters.spawn(async move {
            let mut request = tonic::Request::new(pb::LeaseRequest {
                queue: "herd".into(),
                max_messages: 1,
                wait: Some(pb_duration(Duration::from_secs(8))),
                ..Default::default()
            });
            request.set_timeout(Duration::from_secs(10));
            c.lease(request).await.unwrap().into_inner().messages
        });
    }
    // Each waiter has had its first look and sleeps.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = app.own_redis().command_calls("evalsha");
    enqueue(&app, "herd", spec("one")).await;
    let got = tokio::time::timeout(Duration::from_secs(5), waiters.join_next())
        .await
        .expect("a waiter is woken")
        .expect("a waiter")
        .unwrap();
    assert_eq!(payloads(&got), ["one"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let scripts = app.own_redis().command_calls("evalsha") - before;
    // The enqueue and the woken waiter's lease; a spare look at most.
    assert!(
        scripts <= 3,
        "{scripts} scripts ran for one enqueue with 20 waiters"
    );
    assert_eq!(waiters.len(), 19, "the others still wait");
    waiters.abort_all();
}
