//! Push delivery against a real HTTP server on 127.0.0.1: retries with the
//! queue's backoff until a 2xx, dead letters after the last attempt,
//! callbacks, signatures over the exact body and URL, key rotation, the
//! host allow-list, and a restart of the service mid-retry.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datalayer::proto::datalayer::queue::v1::{
    self as pb, queue_service_client::QueueServiceClient,
};
use datalayer::services::queue::push::sign;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use crate::harness::{
    Backend, Channel, TestApp, assert_bad_field, pb_duration, spawn_app_with, timed,
};
use crate::invariants::fresh;

const K1: &str = "first-signing-key-000000";
const K2: &str = "second-signing-key-11111";
const K3: &str = "third-signing-key-222222";

/// One request the server received.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: http::HeaderMap,
    body: Vec<u8>,
}

/// An HTTP server that answers 500 to the first `fail` requests of a path
/// under `/work`, then 200; every other path answers 200. It records all.
struct Receiver {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Receiver {
    async fn start(fail: usize) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let log = log.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let log = log.clone();
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes().to_vec())
                                    .unwrap_or_default();
                                let path = parts.uri.path().to_owned();
                                let mut seen = log.lock().unwrap();
                                seen.push(Seen {
                                    path: path.clone(),
                                    headers: parts.headers,
                                    body,
                                });
                                let tries = seen.iter().filter(|s| s.path == path).count();
                                let status = if path.starts_with("/work") && tries <= fail {
                                    500
                                } else {
                                    200
                                };
                                Ok::<_, Infallible>(
                                    http::Response::builder()
                                        .status(status)
                                        .body(Full::new(Bytes::from_static(b"thanks")))
                                        .unwrap(),
                                )
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn at(&self, path: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path == path)
            .cloned()
            .collect()
    }

    async fn wait_for(&self, path: &str, n: usize) -> Vec<Seen> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let got = self.at(path);
            if got.len() >= n || tokio::time::Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn key_file(keys: &[&str]) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), keys.join("\n")).unwrap();
    file
}

async fn app(
    backend: Backend,
    receiver: &Receiver,
    keys: &tempfile::NamedTempFile,
    namespace: Option<&str>,
) -> TestApp {
    let allowed = receiver.addr.to_string();
    let path = keys.path().to_owned();
    spawn_app_with(backend, move |s| {
        s.queue.push.allowed_hosts = vec![allowed];
        s.queue.push.signing_key_file = Some(path);
        s.queue.push.poll_interval = Duration::from_millis(20);
        if let Some(ns) = namespace {
            s.keys.namespace = ns.to_owned();
        }
    })
    .await
}

fn client(app: &TestApp) -> QueueServiceClient<Channel> {
    QueueServiceClient::new(app.channel.clone())
}

async fn set_destination(
    app: &TestApp,
    queue: &str,
    dest: pb::Destination,
) -> Result<pb::SetDestinationResponse, tonic::Status> {
    client(app)
        .set_destination(timed(pb::SetDestinationRequest {
            queue: queue.into(),
            destination: Some(dest),
        }))
        .await
        .map(|r| r.into_inner())
}

async fn enqueue(app: &TestApp, queue: &str, payload: &[u8], max_attempts: u32) -> String {
    client(app)
        .enqueue(timed(pb::EnqueueRequest {
            queue: queue.into(),
            message: Some(pb::MessageSpec {
                payload: payload.to_vec(),
                headers: [("x-trace".to_owned(), "t1".to_owned())].into(),
                max_attempts,
                backoff: Some(pb::Backoff {
                    kind: Some(pb::backoff::Kind::Fixed(pb_duration(
                        Duration::from_millis(100),
                    ))),
                }),
                ..Default::default()
            }),
        }))
        .await
        .expect("enqueue answers")
        .into_inner()
        .message_id
}

fn verifies(seen: &Seen, url: &str, keys: &[&str]) -> Result<sign::Claims, &'static str> {
    let token = seen
        .headers
        .get("datalayer-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let keys: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    sign::verify(token, &keys, url, &seen.body, now, 5)
}

/// Fails twice, then succeeds: three signed attempts with the queue's
/// backoff, the message acked, the success callback told.
async fn retries_until_a_2xx_then_acks_and_calls_back(backend: Backend) {
    let receiver = Receiver::start(2).await;
    let keys = key_file(&[K1, K2]);
    let app = app(backend, &receiver, &keys, None).await;
    let queue = fresh("push");
    let url = receiver.url("/work");
    let set = set_destination(
        &app,
        &queue,
        pb::Destination {
            url: url.clone(),
            callback_url: receiver.url("/done"),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(set.destination.unwrap().parallelism, 1);
    let id = enqueue(&app, &queue, b"{\"signal\":\"buy\"}", 5).await;
    let tries = receiver.wait_for("/work", 3).await;
    assert_eq!(tries.len(), 3, "two failures, then success");
    for (i, t) in tries.iter().enumerate() {
        assert_eq!(t.body, b"{\"signal\":\"buy\"}");
        assert_eq!(t.headers["datalayer-attempt"], (i + 1).to_string().as_str());
        assert_eq!(t.headers["datalayer-message-id"], id.as_str());
        assert_eq!(t.headers["x-trace"], "t1");
        let claims = verifies(t, &url, &[K1, K2]).unwrap();
        assert_eq!(
            (claims.jti.as_str(), claims.queue.as_str()),
            (id.as_str(), queue.as_str())
        );
        assert_eq!(verifies(t, &url, &[K2]), Err("signed by no known key"));
    }
    let done = receiver.wait_for("/done", 1).await;
    let report: serde_json::Value = serde_json::from_slice(&done[0].body).unwrap();
    assert_eq!(report["message_id"], id.as_str());
    assert_eq!(report["attempt"], 3);
    assert!(verifies(&done[0], &receiver.url("/done"), &[K1]).is_ok());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.at("/work").len(), 3, "no delivery after the ack");
    let stats = client(&app)
        .stats(timed(pb::StatsRequest {
            queue: queue.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.acked_total, 1);
}

/// A destination that always fails: the message goes to the dead letters
/// after `max_attempts`, and the failure callback is told.
async fn dead_letters_after_the_last_attempt(backend: Backend) {
    let receiver = Receiver::start(usize::MAX).await;
    let keys = key_file(&[K1]);
    let app = app(backend, &receiver, &keys, None).await;
    let queue = fresh("push");
    set_destination(
        &app,
        &queue,
        pb::Destination {
            url: receiver.url("/work"),
            failure_callback_url: receiver.url("/failed"),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let id = enqueue(&app, &queue, b"x", 2).await;
    let failed = receiver.wait_for("/failed", 1).await;
    assert_eq!(receiver.at("/work").len(), 2);
    let report: serde_json::Value = serde_json::from_slice(&failed[0].body).unwrap();
    assert_eq!(report["message_id"], id.as_str());
    let dead = client(&app)
        .list_dead(timed(pb::ListDeadRequest {
            queue: queue.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dead.messages.len(), 1);
    assert!(
        dead.messages[0].reason.contains("500"),
        "{:?}",
        dead.messages[0].reason
    );
}

/// Only allowed hosts, http(s) URLs and signed delivery are accepted;
/// GetDestination reads what was set, and an empty url clears it.
async fn destinations_are_checked_read_and_cleared(backend: Backend) {
    let receiver = Receiver::start(0).await;
    let keys = key_file(&[K1]);
    let app = app(backend, &receiver, &keys, None).await;
    let queue = fresh("push");
    let bad = |url: &str| pb::Destination {
        url: url.into(),
        ..Default::default()
    };
    assert_bad_field(
        client(&app)
            .set_destination(timed(pb::SetDestinationRequest {
                queue: queue.clone(),
                destination: Some(bad("http://169.254.169.254/latest/meta-data")),
            }))
            .await,
        "destination.url",
    );
    assert_bad_field(
        client(&app)
            .set_destination(timed(pb::SetDestinationRequest {
                queue: queue.clone(),
                destination: Some(bad(&format!("ftp://{}/x", receiver.addr))),
            }))
            .await,
        "destination.url",
    );
    let mut slow = bad(&receiver.url("/work"));
    slow.timeout = Some(pb_duration(Duration::from_secs(3600)));
    slow.callback_url = "http://elsewhere.example/cb".into();
    let status = client(&app)
        .set_destination(timed(pb::SetDestinationRequest {
            queue: queue.clone(),
            destination: Some(slow),
        }))
        .await;
    assert_bad_field(status, "destination.callback_url");
    let mut good = bad(&receiver.url("/work"));
    good.parallelism = 4;
    good.headers = [("authorization".to_owned(), "Bearer t".to_owned())].into();
    set_destination(&app, &queue, good).await.unwrap();
    let got = client(&app)
        .get_destination(timed(pb::GetDestinationRequest {
            queue: queue.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(got.found);
    assert_eq!(got.destination.unwrap().parallelism, 4);
    enqueue(&app, &queue, b"hello", 3).await;
    let seen = receiver.wait_for("/work", 1).await;
    assert_eq!(seen[0].headers["authorization"], "Bearer t");
    let cleared = set_destination(&app, &queue, pb::Destination::default())
        .await
        .unwrap();
    assert!(cleared.destination.is_none());
    let got = client(&app)
        .get_destination(timed(pb::GetDestinationRequest {
            queue: queue.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(!got.found);
    // Without a signing key there is no push delivery.
    let unsigned = spawn_app_with(backend, |s| {
        s.queue.push.allowed_hosts = vec![receiver.addr.to_string()]
    })
    .await;
    assert_bad_field(
        client(&unsigned)
            .set_destination(timed(pb::SetDestinationRequest {
                queue,
                destination: Some(bad(&receiver.url("/work"))),
            }))
            .await,
        "destination.url",
    );
}

crate::conformance!(
    retries_until_a_2xx_then_acks_and_calls_back,
    dead_letters_after_the_last_attempt,
    destinations_are_checked_read_and_cleared,
);

/// The service stops after a failed attempt and another starts on the
/// same Redis with the keys rotated (the next key now signs): the message
/// is delivered, once, signed with a key receivers already trust.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_retry_with_rotated_keys_loses_nothing() {
    let receiver = Receiver::start(1).await;
    let namespace = fresh("pushns");
    let queue = fresh("push");
    let url = receiver.url("/work");
    let first_keys = key_file(&[K1, K2]);
    {
        let first = app(Backend::Redis, &receiver, &first_keys, Some(&namespace)).await;
        let mut dest = pb::Destination {
            url: url.clone(),
            ..Default::default()
        };
        dest.timeout = Some(pb_duration(Duration::from_secs(2)));
        set_destination(&first, &queue, dest).await.unwrap();
        let mut c = client(&first);
        c.enqueue(timed(pb::EnqueueRequest {
            queue: queue.clone(),
            message: Some(pb::MessageSpec {
                payload: b"order-1".to_vec(),
                max_attempts: 5,
                backoff: Some(pb::Backoff {
                    kind: Some(pb::backoff::Kind::Fixed(pb_duration(
                        Duration::from_millis(800),
                    ))),
                }),
                ..Default::default()
            }),
        }))
        .await
        .unwrap();
        assert_eq!(receiver.wait_for("/work", 1).await.len(), 1);
        // The first attempt failed; the service goes away before the retry.
    }
    let rotated = key_file(&[K2, K3]);
    let second = app(Backend::Redis, &receiver, &rotated, Some(&namespace)).await;
    let tries = receiver.wait_for("/work", 2).await;
    assert_eq!(tries.len(), 2);
    assert_eq!(tries[1].body, b"order-1");
    assert!(
        verifies(&tries[1], &url, &[K1, K2]).is_ok(),
        "receivers that know the next key verify"
    );
    assert!(verifies(&tries[0], &url, &[K1, K2]).is_ok());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        receiver.at("/work").len(),
        2,
        "delivered once after the restart"
    );
    let stats = client(&second)
        .stats(timed(pb::StatsRequest { queue }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.acked_total, 1);
}
