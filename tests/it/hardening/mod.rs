//! The defects an adversarial test found (issue 10), each with the test
//! that failed before its fix: what a careless or hostile caller, peer or
//! operator can do, and what the service answers.

mod connections;
mod inputs;
mod pipelining;
mod retries;
mod store;

use std::time::Duration;

use datalayer::proto::datalayer::ratelimit::v1::{
    CheckRequest, CheckResponse, Reason, check_request::LimitSource,
};
use datalayer::services::ratelimit::{
    PolicySpec,
    settings::{AlgorithmName, FailModeName},
};
use futures::future::join_all;
use prost::Message;
use tonic::Code;

const CHECK: &str = "/datalayer.ratelimit.v1.RateLimitService/Check";

use crate::harness::{Backend, spawn_app_with};
use crate::metrics::{http_get, sample};

/// 200 concurrent checks on a 3-per-hour fail-open policy, with Redis
/// healthy, sent with raw `grpc-timeout` headers short and long: none fails
/// open, at most 3 are admitted (exactly 3 with a deadline long enough),
/// and every other answer is a decision or DEADLINE_EXCEEDED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_caller_deadline_never_fails_open() {
    let policy = format!("scarce-{}", crate::invariants::fresh("p"));
    let name = policy.clone();
    let app = spawn_app_with(Backend::Redis, move |s| {
        s.ratelimit.policies.insert(
            name,
            PolicySpec {
                algorithm: Some(AlgorithmName::Gcra),
                limit: Some(3),
                period: Some(Duration::from_secs(3600)),
                fail_mode: Some(FailModeName::Open),
                ..Default::default()
            },
        );
    })
    .await;
    // A raw client: it sends the header and waits for the answer, as a
    // load generator does, where a gRPC client would cancel by itself.
    let raw = crate::harness::raw::Raw::connect(app.addr).await;
    for timeout in ["1M", "1m", "100u", "1n"] {
        let key = crate::invariants::fresh("k");
        let body = crate::harness::raw::frame(
            false,
            &CheckRequest {
                reserve: false,
                key: key.clone(),
                limit_source: Some(LimitSource::Policy(policy.clone())),
                cost: None,
            }
            .encode_to_vec(),
        );
        let calls = (0..200).map(|_| {
            let (mut raw, body) = (raw.clone(), body.clone());
            tokio::spawn(async move { raw.call(CHECK, &[("grpc-timeout", timeout)], body).await })
        });
        let mut admitted = 0;
        for answer in join_all(calls).await {
            let answer = answer.expect("task");
            match answer.grpc_status {
                Some(0) => {
                    let r = CheckResponse::decode(&answer.body[5..]).expect("a CheckResponse");
                    assert_ne!(r.reason, Reason::FailOpen as i32, "{timeout}: failed open");
                    admitted += u32::from(r.allowed);
                }
                Some(code) => {
                    assert_eq!(code, Code::DeadlineExceeded as i32, "{timeout}: {answer:?}")
                }
                None => panic!("{timeout}: no status: {answer:?}"),
            }
        }
        assert!(admitted <= 3, "{timeout}: admitted {admitted}");
        if timeout == "1M" {
            assert_eq!(admitted, 3, "a one-minute deadline decides every call");
        }
    }
    // The server's own count: no decision was a fail-open one.
    let (_, text) = http_get(app.metrics_addr.expect("metrics"), "/metrics").await;
    let label = format!("policy=\"{policy}\"");
    assert!(sample(&text, "datalayer_ratelimit_decisions_total", &[&label]).is_some());
    let failed_open = sample(
        &text,
        "datalayer_ratelimit_decisions_total",
        &[&label, "result=\"fail_open\""],
    );
    assert_eq!(
        failed_open, None,
        "no fail-open decision with Redis healthy"
    );
}
