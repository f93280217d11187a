//! Consumer groups (each message to one member, redelivered when a member
//! drops it unacknowledged) and 1,000 fan-out subscribers on one topic.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use datalayer::proto::datalayer::topic::v1::{
    self as pb, subscribe_request::From, topic_service_client::TopicServiceClient,
};

use super::{WAIT, client, next_message, publish_many, request, subscribe};
use crate::harness::{Backend, Channel, pb_duration, timed};
use crate::invariants::fresh;

fn member(topic: &str, group: &str, consumer: &str) -> pb::SubscribeRequest {
    let mut r = request(topic, Some(From::AfterId("0-0".into())));
    r.group = group.into();
    r.consumer = consumer.into();
    r.ack_timeout = Some(pb_duration(Duration::from_millis(400)));
    r
}

/// Two members share the group's messages, each delivered to one; what a
/// member took and dropped without an ack goes to the other after the ack
/// timeout, with its delivery count raised; acked messages stay done.
/// (What reached the dropped member's connection but not its reader is
/// redelivered too: that is what at-least-once means here.)
async fn groups_split_work_and_redeliver_what_a_dropped_member_held(backend: Backend) {
    let app = super::app(backend).await;
    let topic = fresh("g");
    let payloads: Vec<String> = (0..20).map(|i| format!("job{i}")).collect();
    publish_many(&app, &topic, &payloads).await;
    let mut c = client(&app);
    // The first member takes some messages and dies without acking them.
    let mut doomed = subscribe(&mut c, member(&topic, "workers", "a")).await;
    let mut held = BTreeSet::new();
    for _ in 0..3 {
        held.insert(next_message(&mut doomed).await.id);
    }
    drop(doomed);
    // The second member acks everything it gets until all 20 are done.
    let mut survivor = subscribe(&mut c, member(&topic, "workers", "b")).await;
    let mut done: BTreeMap<String, u32> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while done.len() < 20 && tokio::time::Instant::now() < deadline {
        let m = next_message(&mut survivor).await;
        c.ack(timed(pb::AckRequest {
            topic: topic.clone(),
            group: "workers".into(),
            ids: vec![m.id.clone()],
        }))
        .await
        .unwrap();
        done.insert(m.id, m.delivery_count);
    }
    assert_eq!(done.len(), 20, "every message was done once");
    for id in &held {
        assert!(done[id] >= 2, "{id} was redelivered (count {})", done[id]);
    }
    let stats = c
        .get_topic_stats(timed(pb::GetTopicStatsRequest {
            topic: topic.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    let group = stats.groups.iter().find(|g| g.name == "workers").unwrap();
    assert_eq!(group.pending, 0);
    assert!(group.consumers >= 2);
    // An ack of what is already acked counts nothing.
    let again = c
        .ack(timed(pb::AckRequest {
            topic,
            group: "workers".into(),
            ids: held.into_iter().collect(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.acked, 0);
}

/// 1,000 subscribers on one topic (over ten connections) each get every
/// message in order, fed by one reader on this replica.
async fn a_thousand_subscribers_get_every_message(backend: Backend) {
    let app = super::app(backend).await;
    let topic = fresh("fan");
    let mut subs = Vec::new();
    for _ in 0..10 {
        let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut c = TopicServiceClient::new(Channel::new(channel));
        for _ in 0..100 {
            subs.push(subscribe(&mut c, request(&topic, None)).await);
        }
    }
    let stats = client(&app)
        .get_topic_stats(timed(pb::GetTopicStatsRequest {
            topic: topic.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.local_subscribers, 1000);
    let payloads: Vec<String> = (0..20).map(|i| format!("{i}")).collect();
    publish_many(&app, &topic, &payloads[..10]).await;
    publish_many(&app, &topic, &payloads[10..]).await;
    let readers = subs.into_iter().map(|mut s| {
        tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..20 {
                got.push(String::from_utf8(next_message(&mut s).await.payload).unwrap());
            }
            got
        })
    });
    for got in futures::future::join_all(readers).await {
        assert_eq!(got.unwrap(), payloads);
    }
}

crate::conformance!(
    groups_split_work_and_redeliver_what_a_dropped_member_held,
    a_thousand_subscribers_get_every_message,
);
