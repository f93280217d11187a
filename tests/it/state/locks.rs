//! Locks: leases with fencing tokens, on memory, Redis and a cluster.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use datalayer::proto::datalayer::state::v1 as pb;
use tonic::Code;

use super::client;
use crate::harness::{Backend, assert_bad_field, pb_duration, spawn_app, timed};

fn acquire(name: &str, ttl: Duration, wait: Duration) -> tonic::Request<pb::AcquireLockRequest> {
    let mut request = tonic::Request::new(pb::AcquireLockRequest {
        name: name.into(),
        ttl: Some(pb_duration(ttl)),
        wait: Some(pb_duration(wait)),
    });
    request.set_timeout(wait + Duration::from_secs(2));
    request
}

fn release(name: &str, lease_id: &str) -> pb::ReleaseLockRequest {
    pb::ReleaseLockRequest {
        name: name.into(),
        lease_id: lease_id.into(),
    }
}

/// A held lock is not acquired again; release frees it only for its own
/// lease; every acquisition gets a larger fencing token; renewing a lost
/// lease is FAILED_PRECONDITION "lock lost".
async fn a_lock_is_held_by_one_lease_at_a_time(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut c = client(&app);
    let ttl = Duration::from_secs(30);
    let first = c
        .acquire_lock(acquire("leader", ttl, Duration::ZERO))
        .await
        .unwrap()
        .into_inner();
    assert!(first.acquired && first.fencing_token > 0);
    let second = c
        .acquire_lock(acquire("leader", ttl, Duration::ZERO))
        .await
        .unwrap()
        .into_inner();
    assert!(!second.acquired);
    assert!(second.lease_id.is_empty());
    let retry = second.retry_after.expect("when the lease ends");
    assert!(retry.seconds > 20, "{retry:?}");

    let stranger = "0".repeat(32);
    assert!(
        !c.release_lock(timed(release("leader", &stranger)))
            .await
            .unwrap()
            .into_inner()
            .released
    );
    let renewed = c
        .renew_lock(timed(pb::RenewLockRequest {
            name: "leader".into(),
            lease_id: first.lease_id.clone(),
            ttl: Some(pb_duration(ttl)),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(renewed.fencing_token, first.fencing_token);
    assert!(
        c.release_lock(timed(release("leader", &first.lease_id)))
            .await
            .unwrap()
            .into_inner()
            .released
    );
    assert!(
        !c.release_lock(timed(release("leader", &first.lease_id)))
            .await
            .unwrap()
            .into_inner()
            .released
    );

    let lost = c
        .renew_lock(timed(pb::RenewLockRequest {
            name: "leader".into(),
            lease_id: first.lease_id.clone(),
            ttl: Some(pb_duration(ttl)),
        }))
        .await
        .unwrap_err();
    assert_eq!(lost.code(), Code::FailedPrecondition);
    assert!(lost.message().contains("lock lost"), "{lost:?}");

    let third = c
        .acquire_lock(acquire("leader", ttl, Duration::ZERO))
        .await
        .unwrap()
        .into_inner();
    assert!(third.acquired && third.fencing_token > first.fencing_token);
}

/// What a downstream system does with fencing tokens: it refuses a write
/// carrying a token older than one it has seen, and counts who is inside.
#[derive(Default)]
struct Guarded {
    holders: u32,
    last_token: u64,
    entries: u32,
}

/// 50 competitors for one lock, each waiting for it: never two inside at
/// once, and each holder's token is larger than every earlier one.
async fn competitors_never_hold_a_lock_together(backend: Backend) {
    let app = spawn_app(backend).await;
    let resource = Arc::new(Mutex::new(Guarded::default()));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let mut c = client(&app);
        let resource = resource.clone();
        tasks.push(tokio::spawn(async move {
            let got = c
                .acquire_lock(acquire(
                    "trade",
                    Duration::from_secs(10),
                    Duration::from_secs(20),
                ))
                .await
                .unwrap()
                .into_inner();
            assert!(
                got.acquired,
                "every competitor gets its turn within the wait"
            );
            {
                let mut r = resource.lock().unwrap();
                assert_eq!(r.holders, 0, "two holders at once");
                assert!(
                    got.fencing_token > r.last_token,
                    "an older token was accepted"
                );
                r.holders += 1;
                r.last_token = got.fencing_token;
                r.entries += 1;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
            resource.lock().unwrap().holders -= 1;
            let released = c
                .release_lock(timed(release("trade", &got.lease_id)))
                .await
                .unwrap();
            assert!(released.into_inner().released);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(resource.lock().unwrap().entries, 50);
}

/// A holder that dies without releasing keeps the lock until its TTL; the
/// next competitor then acquires it with a larger token. (The clients'
/// tests kill a real holder process with SIGKILL.)
async fn a_dead_holders_lock_frees_after_its_ttl(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut c = client(&app);
    let ttl = Duration::from_millis(600);
    let dead = c
        .acquire_lock(acquire("job", ttl, Duration::ZERO))
        .await
        .unwrap()
        .into_inner();
    assert!(dead.acquired);
    let early = c
        .acquire_lock(acquire("job", ttl, Duration::ZERO))
        .await
        .unwrap()
        .into_inner();
    assert!(!early.acquired, "not before the TTL");
    let next = c
        .acquire_lock(acquire("job", ttl, Duration::from_secs(5)))
        .await
        .unwrap()
        .into_inner();
    assert!(next.acquired);
    assert!(next.fencing_token > dead.fencing_token);
}

/// Renewing extends the lease past its first TTL.
async fn renewing_keeps_the_lock(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut c = client(&app);
    let short = Duration::from_millis(400);
    let held = c
        .acquire_lock(acquire("renewed", short, Duration::ZERO))
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.renew_lock(timed(pb::RenewLockRequest {
        name: "renewed".into(),
        lease_id: held.lease_id.clone(),
        ttl: Some(pb_duration(Duration::from_secs(10))),
    }))
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let other = c
        .acquire_lock(acquire("renewed", short, Duration::ZERO))
        .await
        .unwrap()
        .into_inner();
    assert!(!other.acquired, "the renewed lease still holds");
}

/// Lock names, TTLs, waits and lease ids are checked.
async fn bad_lock_input_is_invalid_argument(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut c = client(&app);
    let req = pb::AcquireLockRequest {
        name: "a b".into(),
        ttl: None,
        wait: Some(pb_duration(Duration::from_secs(3600))),
    };
    let err = c.acquire_lock(timed(req)).await;
    for field in ["name", "ttl", "wait"] {
        assert_bad_field(
            Err::<tonic::Response<()>, _>(err.as_ref().unwrap_err().clone()),
            field,
        );
    }
    let long = pb::AcquireLockRequest {
        name: "x".into(),
        ttl: Some(pb_duration(Duration::from_secs(2 * 3600))),
        wait: None,
    };
    assert_bad_field(c.acquire_lock(timed(long)).await, "ttl");
    let renew = pb::RenewLockRequest {
        name: "x".into(),
        lease_id: "not-a-lease".into(),
        ttl: Some(pb_duration(Duration::from_secs(1))),
    };
    assert_bad_field(c.renew_lock(timed(renew)).await, "lease_id");
    assert_bad_field(c.release_lock(timed(release("x", "ABC"))).await, "lease_id");
}

crate::conformance!(
    a_lock_is_held_by_one_lease_at_a_time,
    competitors_never_hold_a_lock_together,
    a_dead_holders_lock_frees_after_its_ttl,
    renewing_keeps_the_lock,
    bad_lock_input_is_invalid_argument,
);
