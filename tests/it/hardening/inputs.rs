//! Requests no careful client sends: bounded errors, INVALID_ARGUMENT for
//! whatever does not decode, the documented size limits, and compression
//! only where it pays.

use std::io::Write;

use datalayer::proto::datalayer::ratelimit::v1::{CheckRequest, check_request::LimitSource};
use prost::Message;
use tonic::Code;

use crate::harness::{Backend, raw, spawn_app, spawn_app_with};

const CHECK: &str = "/datalayer.ratelimit.v1.RateLimitService/Check";

fn policy_check(policy: String) -> CheckRequest {
    CheckRequest {
        reserve: false,
        key: "k".into(),
        limit_source: Some(LimitSource::Policy(policy)),
        cost: None,
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_quote_a_bounded_prefix_of_what_was_sent() {
    let app = spawn_app(Backend::Memory).await;
    let huge = "x".repeat(3 * 1024 * 1024);
    let status = app
        .ratelimit
        .clone()
        .check(policy_check(huge))
        .await
        .expect_err("unknown policy");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().len() < 1024,
        "{} bytes",
        status.message().len()
    );
    assert!(
        status.details().len() < 4096,
        "{} bytes",
        status.details().len()
    );
    assert!(status.message().contains("bytes)"), "{}", status.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_do_not_decode_are_invalid_argument_and_counted() {
    let app = spawn_app(Backend::Memory).await;
    let mut raw = raw::Raw::connect(app.addr).await;
    let mut nested = vec![0x7b_u8; 200]; // start-group, field 15
    nested.extend(vec![0x7c_u8; 200]); // end-group
    let valid = policy_check("closed".into()).encode_to_vec();
    let mut two = raw::frame(false, &valid);
    two.extend(raw::frame(false, &valid));
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<u8>);
    let cases: Vec<Case<'_>> = vec![
        (
            "invalid UTF-8",
            vec![],
            raw::frame(false, &[0x0a, 0x02, 0xff, 0xfe]),
        ),
        (
            "truncated field",
            vec![],
            raw::frame(false, &[0x0a, 0x10, b'a']),
        ),
        ("truncated frame", vec![], vec![0, 0, 0, 0, 9, 0x0a]),
        ("nested too deep", vec![], raw::frame(false, &nested)),
        ("no message", vec![], vec![]),
        (
            "bad gzip",
            vec![("grpc-encoding", "gzip")],
            raw::frame(true, b"not gzip at all"),
        ),
        (
            "compressed, no encoding",
            vec![],
            raw::frame(true, &gzip(&valid)),
        ),
        ("two messages", vec![], two),
    ];
    for (name, headers, body) in cases {
        let answer = raw.call(CHECK, &headers, body).await;
        assert_eq!(
            answer.grpc_status,
            Some(Code::InvalidArgument as i32),
            "{name}: {answer:?}"
        );
        assert!(
            answer.headers.contains_key("grpc-status-details-bin"),
            "{name}: a BadRequest names the request: {answer:?}"
        );
    }
    let (_, text) = crate::metrics::http_get(app.metrics_addr.unwrap(), "/metrics").await;
    let counted = crate::metrics::sample(
        &text,
        "datalayer_rpc_decode_errors_total",
        &["method=\"Check\""],
    );
    assert!(counted.is_some_and(|n| n >= 5.0), "{counted:?}");
    // And the same connection still serves good requests.
    let answer = raw.call(CHECK, &[], raw::frame(false, &valid)).await;
    assert_eq!(answer.grpc_status, Some(0), "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_grpc_content_types_are_served() {
    let app = spawn_app(Backend::Memory).await;
    let mut raw = raw::Raw::connect(app.addr).await;
    let body = raw::frame(false, &policy_check("closed".into()).encode_to_vec());
    let answer = raw
        .call(CHECK, &[("content-type", "text/plain")], body)
        .await;
    assert_eq!(answer.http, 415, "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_size_limit_applies_to_the_decoded_message_as_out_of_range() {
    let app = spawn_app_with(Backend::Memory, |s| s.server.max_request_bytes = 1024).await;
    let mut raw = raw::Raw::connect(app.addr).await;
    let big = policy_check("p".repeat(4000)).encode_to_vec();
    let answer = raw.call(CHECK, &[], raw::frame(false, &big)).await;
    assert_eq!(
        answer.grpc_status,
        Some(Code::OutOfRange as i32),
        "{answer:?}"
    );
    // Small on the wire, large once inflated: the same answer.
    let inflating = gzip(&big);
    assert!(inflating.len() < 1024);
    let answer = raw
        .call(
            CHECK,
            &[("grpc-encoding", "gzip")],
            raw::frame(true, &inflating),
        )
        .await;
    assert_eq!(
        answer.grpc_status,
        Some(Code::OutOfRange as i32),
        "{answer:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_answers_are_not_compressed() {
    let app = spawn_app(Backend::Memory).await;
    let mut raw = raw::Raw::connect(app.addr).await;
    let body = raw::frame(false, &policy_check("closed".into()).encode_to_vec());
    let answer = raw
        .call(CHECK, &[("grpc-accept-encoding", "gzip")], body.clone())
        .await;
    assert_eq!(answer.grpc_status, Some(0), "{answer:?}");
    assert_eq!(
        answer.body.first(),
        Some(&0),
        "a small answer is sent plain"
    );
    let app = spawn_app_with(Backend::Memory, |s| s.server.compress_min_bytes = 0).await;
    let mut raw = raw::Raw::connect(app.addr).await;
    let answer = raw
        .call(CHECK, &[("grpc-accept-encoding", "gzip")], body)
        .await;
    assert_eq!(
        answer.body.first(),
        Some(&1),
        "compressed when configured so"
    );
}

/// A stream is compressed whole or not at all, so it is sent plain unless
/// `server.compress_streams` says otherwise, even to a caller that accepts
/// gzip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_sent_plain_unless_configured() {
    use datalayer::proto::datalayer::flags::v1::{
        WatchRequest, flag_service_client::FlagServiceClient,
    };
    use tonic::codec::CompressionEncoding;
    async fn encoding(app: &crate::harness::TestApp) -> Option<String> {
        let mut client = FlagServiceClient::new(app.channel.clone())
            .accept_compressed(CompressionEncoding::Gzip);
        let watch = client
            .watch(WatchRequest {
                flag_set: crate::invariants::fresh("plain"),
            })
            .await
            .expect("a stream");
        watch
            .metadata()
            .get("grpc-encoding")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
    let app = spawn_app(Backend::Memory).await;
    assert_eq!(encoding(&app).await, None, "a stream is plain by default");
    let app = spawn_app_with(Backend::Memory, |s| s.server.compress_streams = true).await;
    assert_eq!(
        encoding(&app).await.as_deref(),
        Some("gzip"),
        "gzipped when configured so"
    );
}
