//! `/metrics`: Prometheus text with per-RPC counts and latencies, rate-limit
//! decisions, Redis pool and pipeline figures, and store health.

use std::{net::SocketAddr, time::Duration};

use crate::harness::{Backend, spawn_app, spawn_app_with};
use datalayer::proto::datalayer::{
    cache::v1::GetRequest,
    ratelimit::v1::{CheckRequest, check_request::LimitSource},
};

/// `GET path` over plain HTTP/1.1: (status line, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("metrics port answers");
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
        .await
        .expect("the response ends")
        .unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

/// The value of the first sample of `name` carrying every label in `labels`.
pub fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| labels.iter().all(|label| l.contains(label)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn policy_check(key: &str) -> CheckRequest {
    CheckRequest {
        reserve: false,
        key: key.into(),
        limit_source: Some(LimitSource::Policy("auth".into())),
        cost: None,
    }
}

#[tokio::test]
async fn metrics_count_calls_decisions_and_redis() {
    let app = spawn_app(Backend::Redis).await;
    app.wait_for_health(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    let mut ratelimit = app.ratelimit.clone();
    // `auth` admits 5 per minute: 5 allowed, 2 rejected.
    for _ in 0..7 {
        ratelimit.check(policy_check("metrics-user")).await.unwrap();
    }
    ratelimit
        .check(policy_check(""))
        .await
        .expect_err("bad input");
    app.cache
        .clone()
        .get(GetRequest { key: "k".into() })
        .await
        .unwrap();

    let addr = app.metrics_addr.expect("metrics are on by default");
    let (status, text) = http_get(addr, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    let check = [
        "service=\"datalayer.ratelimit.v1.RateLimitService\"",
        "method=\"Check\"",
    ];
    let ok = sample(
        &text,
        "datalayer_rpc_requests_total",
        &[check[0], check[1], "code=\"OK\""],
    );
    assert!(ok.is_some_and(|n| n >= 7.0), "OK checks: {ok:?}\n{text}");
    let bad = sample(
        &text,
        "datalayer_rpc_requests_total",
        &[check[0], check[1], "code=\"InvalidArgument\""],
    );
    assert!(bad.is_some_and(|n| n >= 1.0), "bad input counted: {bad:?}");
    let cache_get = sample(
        &text,
        "datalayer_rpc_requests_total",
        &[
            "service=\"datalayer.cache.v1.CacheService\"",
            "method=\"Get\"",
        ],
    );
    assert!(cache_get.is_some_and(|n| n >= 1.0));
    let latency = sample(&text, "datalayer_rpc_duration_seconds_count", &check);
    assert!(
        latency.is_some_and(|n| n >= 8.0),
        "latency samples: {latency:?}"
    );
    assert!(text.contains("datalayer_rpc_duration_seconds_bucket{"));

    let allowed = sample(
        &text,
        "datalayer_ratelimit_decisions_total",
        &["policy=\"auth\"", "result=\"allowed\""],
    );
    let rejected = sample(
        &text,
        "datalayer_ratelimit_decisions_total",
        &["policy=\"auth\"", "result=\"rejected\""],
    );
    assert!(allowed.is_some_and(|n| n >= 5.0), "allowed {allowed:?}");
    assert!(rejected.is_some_and(|n| n >= 2.0), "rejected {rejected:?}");

    let roundtrips = sample(&text, "datalayer_redis_roundtrip_seconds_count", &[]);
    assert!(roundtrips.is_some_and(|n| n >= 1.0), "{roundtrips:?}");
    assert!(sample(&text, "datalayer_redis_pipeline_commands_count", &[]).is_some());
    assert!(sample(&text, "datalayer_redis_pool_connections", &[]).is_some());
    assert!(sample(&text, "datalayer_redis_pool_in_use_connections", &[]).is_some());
    assert!(sample(&text, "datalayer_redis_pool_wait_seconds_count", &[]).is_some());
    assert!(text.contains("# HELP datalayer_rpc_requests_total"));

    let (status, _) = http_get(addr, "/elsewhere").await;
    assert!(status.contains("404"), "{status}");
}

#[tokio::test]
async fn store_up_follows_redis() {
    let mut app = spawn_app(Backend::OwnRedis).await;
    app.wait_for_health(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    app.own_redis().kill();
    app.wait_for_health(tonic_health::pb::health_check_response::ServingStatus::NotServing)
        .await;
    let mut ratelimit = app.ratelimit.clone();
    let mut request = tonic::Request::new(policy_check("down"));
    request.set_timeout(Duration::from_millis(300));
    ratelimit.check(request).await.expect_err("Redis is down");
    let (_, text) = http_get(app.metrics_addr.unwrap(), "/metrics").await;
    let unavailable = sample(
        &text,
        "datalayer_rpc_requests_total",
        &["method=\"Check\"", "code=\"Unavailable\""],
    );
    assert!(unavailable.is_some_and(|n| n >= 1.0), "{unavailable:?}");
    let errors = sample(
        &text,
        "datalayer_redis_errors_total",
        &["kind=\"unavailable\""],
    );
    assert!(errors.is_some_and(|n| n >= 1.0), "{errors:?}");
}

#[tokio::test]
async fn metrics_can_be_switched_off() {
    let app = spawn_app_with(Backend::Memory, |s| s.metrics.enabled = false).await;
    assert!(app.metrics_addr.is_none());
}

/// With `metrics.bearer_token_file`, a scrape without the token (or with
/// another) is 401; with it, the metrics.
#[tokio::test]
async fn a_metrics_token_is_required_when_configured() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "s3cret-scrape\n").unwrap();
    let app = crate::harness::spawn_app_with(crate::harness::Backend::Memory, move |s| {
        s.metrics.bearer_token_file = Some(file);
    })
    .await;
    let addr = app.metrics_addr.unwrap();
    let (status, _) = http_get(addr, "/metrics").await;
    assert!(status.contains("401"), "{status}");
    let get = |token: &'static str| async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "GET /metrics HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    };
    assert!(get("wrong").await.starts_with("HTTP/1.1 401"));
    let ok = get("s3cret-scrape").await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.contains("datalayer_"));
}
