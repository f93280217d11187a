//! TopicService conformance on memory, Redis and a cluster: order, replay
//! from an id after a disconnect with nothing missed or repeated, latest
//! and since, consumer groups with a member dropped mid-message, retention,
//! a slow subscriber, 1,000 subscribers, bad input. Groups and fan-out
//! scale: `groups.rs`.

mod groups;

use std::time::Duration;

use datalayer::proto::datalayer::topic::v1::{
    self as pb, subscribe_request::From, subscribe_response::Event,
    topic_service_client::TopicServiceClient,
};
use tonic::Code;

use crate::harness::{Backend, Channel, TestApp, assert_bad_field, spawn_app_with, timed};
use crate::invariants::fresh;

/// The app these tests run against. Many concurrent scripts share one
/// Redis with the whole suite on two cores: a store timeout of a second
/// keeps a busy moment from reading as an outage (the outage tests set
/// their own).
pub async fn app(backend: Backend) -> TestApp {
    crate::harness::spawn_app_with(backend, |s| {
        s.redis.command_timeout = std::time::Duration::from_secs(1)
    })
    .await
}

pub fn client(app: &TestApp) -> TopicServiceClient<Channel> {
    TopicServiceClient::new(app.channel.clone())
}

pub const WAIT: Duration = Duration::from_secs(10);

pub async fn publish(app: &TestApp, topic: &str, payload: &str) -> String {
    client(app)
        .publish(timed(pb::PublishRequest {
            topic: topic.into(),
            payload: payload.as_bytes().to_vec(),
            headers: [("k".to_owned(), payload.to_owned())].into(),
        }))
        .await
        .expect("publish answers")
        .into_inner()
        .id
}

pub async fn publish_many(app: &TestApp, topic: &str, payloads: &[String]) -> Vec<String> {
    client(app)
        .publish_batch(timed(pb::PublishBatchRequest {
            topic: topic.into(),
            messages: payloads
                .iter()
                .map(|p| pb::NewMessage {
                    payload: p.as_bytes().to_vec(),
                    headers: Default::default(),
                })
                .collect(),
        }))
        .await
        .expect("publish_batch answers")
        .into_inner()
        .ids
}

pub fn request(topic: &str, from: Option<From>) -> pb::SubscribeRequest {
    pb::SubscribeRequest {
        topic: topic.into(),
        from,
        ..Default::default()
    }
}

pub type Sub = tonic::Streaming<pb::SubscribeResponse>;

pub async fn subscribe(c: &mut TopicServiceClient<Channel>, req: pb::SubscribeRequest) -> Sub {
    let mut r = tonic::Request::new(req);
    // A stream's deadline bounds the whole stream: long enough for a test
    // that opens a thousand of them on a slow machine.
    r.set_timeout(Duration::from_secs(120));
    c.subscribe(r)
        .await
        .expect("subscribe answers")
        .into_inner()
}

pub async fn next_event(sub: &mut Sub) -> Event {
    tokio::time::timeout(WAIT, sub.message())
        .await
        .expect("an event in time")
        .expect("a healthy stream")
        .expect("the stream goes on")
        .event
        .expect("an event")
}

pub async fn next_message(sub: &mut Sub) -> pb::Message {
    match next_event(sub).await {
        Event::Message(m) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

fn payload(m: &pb::Message) -> String {
    String::from_utf8(m.payload.clone()).unwrap()
}

/// Messages come back in publish order with their payload and headers,
/// replayed from the start, then live.
async fn replay_then_follow_live_in_order(backend: Backend) {
    let app = app(backend).await;
    let topic = fresh("t");
    let first: Vec<String> = (0..30).map(|i| format!("m{i}")).collect();
    let ids = publish_many(&app, &topic, &first).await;
    assert_eq!(ids.len(), 30);
    let one = publish(&app, &topic, "m30").await;
    assert!(
        datalayer::services::topic::MsgId::parse(&one)
            > datalayer::services::topic::MsgId::parse(&ids[29])
    );
    let mut c = client(&app);
    let mut sub = subscribe(&mut c, request(&topic, Some(From::AfterId("0-0".into())))).await;
    for i in 0..31 {
        let m = next_message(&mut sub).await;
        assert_eq!(payload(&m), format!("m{i}"));
        if i == 30 {
            assert_eq!(m.id, one);
            assert_eq!(m.headers.get("k").map(String::as_str), Some("m30"));
        }
    }
    for i in 31..40 {
        publish(&app, &topic, &format!("m{i}")).await;
    }
    for i in 31..40 {
        assert_eq!(payload(&next_message(&mut sub).await), format!("m{i}"));
    }
}

/// A subscriber that disconnects and comes back with the last id it saw
/// gets exactly what followed, while a publisher keeps publishing.
async fn resume_after_a_disconnect_misses_and_repeats_nothing(backend: Backend) {
    let app = app(backend).await;
    let topic = fresh("t");
    let publisher = {
        let channel = app.channel.clone();
        let topic = topic.clone();
        tokio::spawn(async move {
            let mut c = TopicServiceClient::new(channel);
            for i in 0..200 {
                c.publish(timed(pb::PublishRequest {
                    topic: topic.clone(),
                    payload: format!("{i}").into_bytes(),
                    headers: Default::default(),
                }))
                .await
                .unwrap();
                if i % 20 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
    };
    let mut c = client(&app);
    let mut seen: Vec<u32> = Vec::new();
    let mut last = "0-0".to_owned();
    while seen.len() < 200 {
        let mut sub = subscribe(&mut c, request(&topic, Some(From::AfterId(last.clone())))).await;
        // Read a few, then drop the stream (a disconnect).
        for _ in 0..37 {
            if seen.len() == 200 {
                break;
            }
            let m = next_message(&mut sub).await;
            seen.push(payload(&m).parse().unwrap());
            last = m.id;
        }
    }
    publisher.await.unwrap();
    assert_eq!(seen, (0..200).collect::<Vec<u32>>());
}

/// `latest` gets only what is published after it subscribed; `since`
/// replays from a time.
async fn latest_and_since(backend: Backend) {
    let app = app(backend).await;
    let topic = fresh("t");
    publish(&app, &topic, "old").await;
    let mut c = client(&app);
    let mut latest = subscribe(&mut c, request(&topic, Some(From::Latest(true)))).await;
    let mut default = subscribe(&mut c, request(&topic, None)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let cut = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    publish(&app, &topic, "new").await;
    assert_eq!(payload(&next_message(&mut latest).await), "new");
    assert_eq!(payload(&next_message(&mut default).await), "new");
    let since = prost_types::Timestamp {
        seconds: cut.as_secs() as i64,
        nanos: cut.subsec_nanos() as i32,
    };
    let mut from_time = subscribe(&mut c, request(&topic, Some(From::Since(since)))).await;
    assert_eq!(payload(&next_message(&mut from_time).await), "new");
}

/// A topic keeps at most `topic.max_length` messages; a replay from
/// before what is kept starts with a gap naming the first kept id.
async fn retention_trims_and_replays_say_gap(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.topic.max_length = 10).await;
    let topic = fresh("t");
    let payloads: Vec<String> = (0..25).map(|i| format!("m{i}")).collect();
    let ids = publish_many(&app, &topic, &payloads).await;
    let mut c = client(&app);
    let stats = c
        .get_topic_stats(timed(pb::GetTopicStatsRequest {
            topic: topic.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(stats.exists);
    assert_eq!(stats.length, 10);
    assert_eq!(stats.first_id, ids[15]);
    assert_eq!(stats.last_id, ids[24]);
    let mut sub = subscribe(&mut c, request(&topic, Some(From::AfterId(ids[2].clone())))).await;
    match next_event(&mut sub).await {
        Event::Gap(g) => assert_eq!(g.first_kept_id, ids[15]),
        other => panic!("expected a gap, got {other:?}"),
    }
    for i in 15..25 {
        assert_eq!(payload(&next_message(&mut sub).await), format!("m{i}"));
    }
    // From an id still kept: no gap.
    let mut kept = subscribe(
        &mut c,
        request(&topic, Some(From::AfterId(ids[20].clone()))),
    )
    .await;
    assert_eq!(payload(&next_message(&mut kept).await), "m21");
    let deleted = c
        .delete_topic(timed(pb::DeleteTopicRequest {
            topic: topic.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.deleted);
    let gone = c
        .get_topic_stats(timed(pb::GetTopicStatsRequest { topic }))
        .await
        .unwrap()
        .into_inner();
    assert!(!gone.exists);
}

/// A subscriber that stops reading is told it fell behind and where to
/// resume, and its stream ends; another subscriber gets everything.
async fn a_slow_subscriber_falls_behind_without_stalling_others(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.topic.subscriber_buffer = 256).await;
    let topic = fresh("t");
    // On connections of their own: a stream nobody reads holds its
    // connection's flow-control window, and that is the client's doing.
    let connect = || async {
        let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        TopicServiceClient::new(Channel::new(channel))
    };
    let mut slow = subscribe(&mut connect().await, request(&topic, None)).await;
    let mut fast = subscribe(&mut connect().await, request(&topic, None)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let big = "x".repeat(2048);
    // The fast subscriber keeps up: each batch is published once it read
    // the one before.
    let (read_tx, mut read_rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        for n in 1..=3000u32 {
            next_message(&mut fast).await;
            if n % 100 == 0 {
                let _ = read_tx.send(n);
            }
        }
        3000
    });
    for round in 0..30 {
        let batch: Vec<String> = (0..100)
            .map(|i| format!("{}:{big}", round * 100 + i))
            .collect();
        publish_many(&app, &topic, &batch).await;
        tokio::time::timeout(WAIT, read_rx.recv())
            .await
            .expect("the fast one keeps up");
    }
    assert_eq!(
        reader.await.unwrap(),
        3000,
        "the fast subscriber got every message"
    );
    let mut got = 0;
    loop {
        let item = tokio::time::timeout(WAIT, slow.message())
            .await
            .expect("in time");
        match item.expect("healthy").and_then(|r| r.event) {
            Some(Event::Message(_)) => got += 1,
            Some(Event::FellBehind(f)) => {
                assert!(datalayer::services::topic::MsgId::parse(&f.resume_after_id).is_some());
                break;
            }
            other => panic!("expected messages then fell_behind, got {other:?} after {got}"),
        }
    }
    assert!(got < 3000, "the slow one fell behind after {got}");
    assert!(
        tokio::time::timeout(WAIT, slow.message())
            .await
            .unwrap()
            .unwrap()
            .is_none(),
        "the stream ends after fell_behind"
    );
}

/// Every bad field is named.
async fn bad_input_names_every_field(backend: Backend) {
    let app = app(backend).await;
    let mut c = client(&app);
    assert_bad_field(
        c.publish(timed(pb::PublishRequest {
            topic: "{bad}".into(),
            payload: vec![0; 1 << 20],
            headers: [(String::new(), "v".to_owned())].into(),
        }))
        .await,
        "payload",
    );
    assert_bad_field(
        c.publish_batch(timed(pb::PublishBatchRequest {
            topic: "t".into(),
            messages: vec![pb::NewMessage {
                payload: vec![0; 1 << 20],
                headers: Default::default(),
            }],
        }))
        .await,
        "messages[0].payload",
    );
    assert_bad_field(
        c.publish_batch(timed(pb::PublishBatchRequest {
            topic: "t".into(),
            messages: vec![],
        }))
        .await,
        "messages",
    );
    let mut r = request("t", Some(From::AfterId("yesterday".into())));
    r.group = "g g".into();
    let status = c.subscribe(timed(r)).await.map(|_| ());
    assert_bad_field(status.map(tonic::Response::new), "after_id");
    assert_bad_field(
        c.ack(timed(pb::AckRequest {
            topic: "t".into(),
            group: "g".into(),
            ids: vec!["x".into()],
        }))
        .await,
        "ids[0]",
    );
    let missing = c
        .get_topic_stats(timed(pb::GetTopicStatsRequest {
            topic: fresh("none"),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(!missing.exists);
    let status = c
        .subscribe(timed(pb::SubscribeRequest {
            topic: String::new(),
            ..Default::default()
        }))
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

crate::conformance!(
    replay_then_follow_live_in_order,
    resume_after_a_disconnect_misses_and_repeats_nothing,
    latest_and_since,
    retention_trims_and_replays_say_gap,
    a_slow_subscriber_falls_behind_without_stalling_others,
    bad_input_names_every_field,
);

/// Every RPC of TopicService (see `invariants`).
pub fn workload(app: &TestApp) -> futures::future::BoxFuture<'_, Result<(), tonic::Status>> {
    Box::pin(async move {
        let mut c = client(app);
        let topic = fresh("w");
        let scratch = fresh("ws");
        c.publish(timed(pb::PublishRequest {
            topic: topic.clone(),
            payload: b"a".to_vec(),
            headers: Default::default(),
        }))
        .await?;
        c.publish_batch(timed(pb::PublishBatchRequest {
            topic: scratch.clone(),
            messages: vec![pb::NewMessage::default()],
        }))
        .await?;
        let mut fan = c
            .subscribe(timed(request(&topic, Some(From::AfterId("0-0".into())))))
            .await?
            .into_inner();
        fan.message().await?;
        let mut g = request(&topic, Some(From::AfterId("0-0".into())));
        g.group = "workers".into();
        let mut member = c.subscribe(timed(g)).await?.into_inner();
        let got = member.message().await?;
        if let Some(pb::SubscribeResponse {
            event: Some(Event::Message(m)),
        }) = got
        {
            c.ack(timed(pb::AckRequest {
                topic: topic.clone(),
                group: "workers".into(),
                ids: vec![m.id],
            }))
            .await?;
        }
        c.get_topic_stats(timed(pb::GetTopicStatsRequest { topic }))
            .await?;
        c.delete_topic(timed(pb::DeleteTopicRequest { topic: scratch }))
            .await?;
        Ok(())
    })
}
