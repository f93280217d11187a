//! Redis Cluster failure: a master dies; the service keeps answering for
//! the slots still served and reports the others as UNAVAILABLE, never
//! wrong data. (The conformance suites run on a cluster too.)

use std::time::Duration;

use crate::harness::{Backend, RedisCluster, pb_duration, spawn_app_with};
use datalayer::proto::datalayer::cache::v1::{GetManyRequest, GetRequest, SetRequest};
use datalayer::store::redis::{RedisMode, RedisUrl};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_master_fails_only_its_slots() {
    // A cluster of its own: this test kills a master.
    let mut cluster = RedisCluster::start();
    let url = cluster.url();
    let app = spawn_app_with(Backend::Memory, move |s| {
        s.redis.url = Some(RedisUrl::new(url));
        s.redis.mode = RedisMode::Cluster;
    })
    .await;
    // One key per master.
    let mut keys: Vec<(String, u16)> = Vec::new();
    for i in 0..200 {
        let key = format!("key-{i}");
        // The service's key for a cache entry is tagged by the caller key.
        let port = cluster.node_for(&key).port;
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
    cluster
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

/// A master dies and its replica takes over: calls on its slots answer
/// UNAVAILABLE meanwhile (never a wrong answer), then the service finds the
/// new master by itself and serves the data the replica had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_failover_recovers_by_itself() {
    let mut cluster = crate::harness::RedisCluster::start_with_replicas(1);
    let url = cluster.url();
    let app = crate::harness::spawn_app_with(Backend::Memory, move |s| {
        s.redis.url = Some(RedisUrl::new(url));
        s.redis.mode = RedisMode::Cluster;
    })
    .await;
    let mut cache = app.cache.clone();
    let key = "failover-key";
    cache
        .set(SetRequest {
            key: key.into(),
            value: b"before".to_vec(),
            ttl: Some(pb_duration(Duration::from_secs(60))),
            ..Default::default()
        })
        .await
        .expect("set on a healthy cluster");
    let master = cluster.node_for(key);
    // The replica has the write before its master dies (its first sync
    // may still be under way just after the cluster was made).
    // A busy machine may drop a WAIT's connection: that is "not yet".
    let synced = (0..20).any(|_| {
        master
            .command("*3\r\n$4\r\nWAIT\r\n$1\r\n1\r\n$3\r\n500\r\n")
            .is_ok_and(|reply| reply.starts_with(":1"))
    });
    assert!(synced, "the replica acknowledged the write");
    master.kill();

    let started = std::time::Instant::now();
    let mut unavailable = 0;
    let found = until_available(
        started,
        &mut unavailable,
        "read from the new master",
        || {
            let mut cache = cache.clone();
            let mut request = tonic::Request::new(GetRequest { key: key.into() });
            request.set_timeout(Duration::from_millis(800));
            async move { cache.get(request).await }
        },
    )
    .await;
    assert!(found.found, "the promoted replica holds the entry");
    assert_eq!(found.entry.unwrap().value, b"before");
    // Writes reach the new master too. The first may still meet the
    // cluster settling (a slot map refresh on a busy machine can outlast
    // the 250 ms command timeout): UNAVAILABLE, then stored, within the
    // same bound. The write is idempotent, so repeating it is safe.
    let stored = until_available(started, &mut unavailable, "write to the new master", || {
        let mut cache = cache.clone();
        let request = SetRequest {
            key: key.into(),
            value: b"after".to_vec(),
            ttl: Some(pb_duration(Duration::from_secs(60))),
            ..Default::default()
        };
        async move { cache.set(request).await }
    })
    .await;
    assert!(stored.stored);
    let mut request = tonic::Request::new(GetRequest { key: key.into() });
    request.set_timeout(Duration::from_millis(800));
    let read = cache.get(request).await.expect("get after the write");
    assert_eq!(read.into_inner().entry.unwrap().value, b"after");
    eprintln!("failover: {unavailable} UNAVAILABLE answers before recovery");
}

/// Repeats `call` every 200 ms while it answers UNAVAILABLE (counted in
/// `unavailable`), for at most 30 s from `started`; any other error fails.
async fn until_available<T, F, Fut>(
    started: std::time::Instant,
    unavailable: &mut u32,
    what: &str,
    mut call: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    loop {
        match call().await {
            Ok(reply) => return reply.into_inner(),
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{what}: {status:?}");
                *unavailable += 1;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the service never managed to {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
