//! Rate-limit analytics: with `analytics = true` on a policy, every Check
//! decision is counted (by policy and result) and denied keys rank in the
//! `identifier` top list — exactly the decisions the checks answered.

use std::time::Duration;

use datalayer::proto::datalayer::analytics::v1 as pb;
use datalayer::proto::datalayer::ratelimit::v1::{CheckRequest, check_request::LimitSource};
use datalayer::services::ratelimit::settings::{AlgorithmName, PolicySpec};

use super::{app_with, client, now_ms, total, ts};
use crate::harness::{Backend, TestApp, timed};

async fn tracked(app: &TestApp) -> pb::QueryResponse {
    client(app)
        .query(timed(pb::QueryRequest {
            metric: "ratelimit.checks".into(),
            from: Some(ts(now_ms() - 600_000)),
            resolution: "1m".into(),
            group_by: vec!["policy".into(), "result".into()],
            ..Default::default()
        }))
        .await
        .expect("query")
        .into_inner()
}

async fn decisions_are_counted_and_denied_keys_ranked(backend: Backend) {
    let app = app_with(backend, |s| {
        s.analytics.flush_interval = Duration::from_millis(100);
        s.ratelimit.policies.insert(
            "api".into(),
            PolicySpec {
                algorithm: Some(AlgorithmName::FixedWindow),
                limit: Some(3),
                window: Some(Duration::from_secs(3600)),
                analytics: true,
                ..Default::default()
            },
        );
    })
    .await;
    let mut rl = app.ratelimit.clone();
    let (mut allowed, mut denied) = (0, 0);
    // "bot-a" makes 10 checks, "bot-b" 6, "bot-c" 2; a policy without
    // analytics ("auth") is not counted.
    for (key, n) in [("bot-a", 10), ("bot-b", 6), ("bot-c", 2)] {
        for _ in 0..n {
            let d = rl
                .check(timed(CheckRequest {
                    key: key.into(),
                    limit_source: Some(LimitSource::Policy("api".into())),
                    ..Default::default()
                }))
                .await
                .expect("check")
                .into_inner();
            if d.allowed { allowed += 1 } else { denied += 1 }
        }
        rl.check(timed(CheckRequest {
            key: key.into(),
            limit_source: Some(LimitSource::Policy("auth".into())),
            ..Default::default()
        }))
        .await
        .expect("check");
    }
    assert_eq!((allowed, denied), (8, 10));
    // Flushed within a few intervals.
    let mut seen = (0, 0);
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let resp = tracked(&app).await;
        let count = |result: &str| {
            resp.series
                .iter()
                .filter(|s| s.dimensions["result"] == result)
                .map(total)
                .sum::<i64>()
        };
        assert!(
            resp.series.iter().all(|s| s.dimensions["policy"] == "api"),
            "{resp:?}"
        );
        seen = (count("allowed"), count("denied"));
        if seen == (8, 10) {
            break;
        }
    }
    assert_eq!(seen, (8, 10));
    let top = client(&app)
        .top(timed(pb::TopRequest {
            metric: "ratelimit.checks".into(),
            dimension: "identifier".into(),
            k: 5,
            ..Default::default()
        }))
        .await
        .expect("top")
        .into_inner();
    let got: Vec<(&str, i64)> = top
        .entries
        .iter()
        .map(|e| (e.value.as_str(), e.count))
        .collect();
    assert_eq!(got, [("bot-a", 7), ("bot-b", 3)]);
}

conformance!(decisions_are_counted_and_denied_keys_ranked);
