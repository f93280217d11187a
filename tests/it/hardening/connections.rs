//! What a peer can hold: connections that never speak, idle ones, too
//! many, a body that never ends — and shutdown with any of them open.

use std::time::{Duration, Instant};

use datalayer::proto::datalayer::ratelimit::v1::{CheckRequest, check_request::LimitSource};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tonic::Code;

use crate::harness::{Backend, raw, spawn_app_with};

/// Waits (bounded) for the server to close `stream`: true if it did.
async fn closed_by_server(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // SETTINGS, GOAWAY: read on to the end
            Err(_) => return false,
        }
    }
}

fn check() -> CheckRequest {
    CheckRequest {
        reserve: false,
        key: "k".into(),
        limit_source: Some(LimitSource::Policy("closed".into())),
        cost: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_speak_are_closed() {
    let app = spawn_app_with(Backend::Memory, |s| {
        s.server.handshake_timeout = Duration::from_millis(300);
    })
    .await;
    let mut silent = TcpStream::connect(app.addr).await.unwrap();
    assert!(closed_by_server(&mut silent, Duration::from_secs(5)).await);
    // Half a preface is no better.
    let mut slow = TcpStream::connect(app.addr).await.unwrap();
    slow.write_all(b"PRI * HTTP").await.unwrap();
    assert!(closed_by_server(&mut slow, Duration::from_secs(5)).await);
    // HTTP/1.1 is not spoken here.
    let mut http1 = TcpStream::connect(app.addr).await.unwrap();
    http1
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nxxxxxxxxx")
        .await
        .unwrap();
    assert!(closed_by_server(&mut http1, Duration::from_secs(5)).await);
    // The service still serves.
    app.ratelimit.clone().check(check()).await.expect("serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_get_goaway() {
    let app = spawn_app_with(Backend::Memory, |s| {
        s.server.idle_timeout = Duration::from_secs(1);
    })
    .await;
    let mut peer = TcpStream::connect(app.addr).await.unwrap();
    // A preface and an empty SETTINGS frame: an HTTP/2 client that then
    // never opens a stream.
    peer.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    assert!(closed_by_server(&mut peer, Duration::from_secs(10)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_cap_new_connections_are_closed_at_once() {
    let app = spawn_app_with(Backend::Memory, |s| {
        s.server.max_connections = 3;
        s.server.handshake_timeout = Duration::from_secs(30);
    })
    .await;
    // The test's own client already holds one connection.
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(TcpStream::connect(app.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut over = TcpStream::connect(app.addr).await.unwrap();
    assert!(closed_by_server(&mut over, Duration::from_secs(2)).await);
    // The connection already open still serves; freed places are reused.
    app.ratelimit.clone().check(check()).await.expect("serves");
    drop(held);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut again = raw::Raw::connect(app.addr).await;
    let answer = again
        .call(
            "/datalayer.ratelimit.v1.RateLimitService/Check",
            &[],
            raw::frame(false, &[]),
        )
        .await;
    assert_eq!(
        answer.grpc_status,
        Some(Code::InvalidArgument as i32),
        "{answer:?}"
    );
    let (_, text) = crate::metrics::http_get(app.metrics_addr.unwrap(), "/metrics").await;
    let refused = crate::metrics::sample(&text, "datalayer_connections_refused_total", &[]);
    assert!(refused.is_some_and(|n| n >= 1.0), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_idle_connections() {
    let app = spawn_app_with(Backend::Memory, |s| {
        s.server.shutdown_grace = Duration::from_secs(10);
        s.server.handshake_timeout = Duration::from_secs(60);
    })
    .await;
    let _silent = TcpStream::connect(app.addr).await.unwrap();
    let mut quiet = TcpStream::connect(app.addr).await.unwrap();
    quiet
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    app.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown took {:?} with no call in flight",
        started.elapsed()
    );
}

/// A request whose body never ends is cut off by `server.default_timeout`
/// when the caller sends no `grpc-timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_ends_is_cut_off_by_the_default_deadline() {
    let app = spawn_app_with(Backend::Memory, |s| {
        s.server.default_timeout = Duration::from_millis(300);
    })
    .await;
    let mut raw = raw::Raw::connect(app.addr).await;
    let started = Instant::now();
    // A frame header announcing 100 bytes, and then nothing.
    let answer = raw
        .call_unending(
            "/datalayer.ratelimit.v1.RateLimitService/Check",
            vec![0, 0, 0, 0, 100, 1, 2],
        )
        .await;
    assert_eq!(
        answer.grpc_status,
        Some(Code::DeadlineExceeded as i32),
        "{answer:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
