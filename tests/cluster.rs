//! Redis Cluster failure: a master dies; the service keeps answering for
//! the slots still served and reports the others as UNAVAILABLE, never
//! wrong data. (The conformance suites run on a cluster too.)

mod common;

use std::time::Duration;

use common::{Backend, pb_duration, spawn_app};
use datalayer::proto::{GetManyRequest, GetRequest, SetRequest};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_master_fails_only_its_slots() {
    let mut app = spawn_app(Backend::Cluster).await;
    // One key per master.
    let mut keys: Vec<(String, u16)> = Vec::new();
    for i in 0..200 {
        let key = format!("key-{i}");
        let port = app.cluster.as_mut().unwrap().node_for(&key).port;
        if !keys.iter().any(|(_, p)| *p == port) {
            keys.push((key, port));
        }
        if keys.len() == 3 {
            break;
        }
    }
    assert_eq!(keys.len(), 3, "keys on every master");
    let mut cache = app.cache.clone();
    for (key, _) in &keys {
        cache
            .set(SetRequest {
                key: key.clone(),
                value: key.as_bytes().to_vec(),
                ttl: Some(pb_duration(Duration::from_secs(60))),
                ..Default::default()
            })
            .await
            .expect("set on a healthy cluster");
    }

    let (dead_key, dead_port) = keys[0].clone();
    app.cluster
        .as_mut()
        .unwrap()
        .nodes
        .iter_mut()
        .find(|n| n.port == dead_port)
        .unwrap()
        .kill();

    let get = |key: String| {
        let mut cache = cache.clone();
        async move {
            let mut request = tonic::Request::new(GetRequest { key });
            request.set_timeout(Duration::from_millis(800));
            cache.get(request).await.map(|r| r.into_inner())
        }
    };
    for _ in 0..3 {
        // The dead master's key: an error, never a wrong or missing value.
        let status = get(dead_key.clone()).await.expect_err("its master is dead");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        // The others still answer, with their own values.
        for (key, _) in &keys[1..] {
            let got = get(key.clone()).await.expect("its master is alive");
            assert!(got.found);
            assert_eq!(got.entry.unwrap().value, key.as_bytes());
        }
    }
    // A batch across masters fails as a whole rather than answer wrongly.
    let mut request = tonic::Request::new(GetManyRequest {
        keys: keys.iter().map(|(k, _)| k.clone()).collect(),
    });
    request.set_timeout(Duration::from_millis(800));
    let status = cache.get_many(request).await.expect_err("one slot is down");
    assert_eq!(status.code(), Code::Unavailable);
}
