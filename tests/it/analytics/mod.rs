//! AnalyticsService conformance on memory, Redis and a cluster: exact
//! counts under concurrent writers, samples, bucket boundaries, unique
//! counts within 2% at 100,000, top-k of a skewed distribution, the
//! combination cap, the metric cap, resolutions and bad input. Redis-only
//! checks (Redis time, TTLs) and rate-limit analytics: `redis_only.rs`,
//! `ratelimit.rs`.

mod ratelimit;
mod redis_only;

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use datalayer::proto::datalayer::analytics::v1::{
    self as pb, analytics_service_client::AnalyticsServiceClient,
};
use tonic::Code;

use crate::harness::{Backend, Channel, TestApp, assert_bad_field, timed};
use crate::invariants::fresh;

pub async fn app(backend: Backend) -> TestApp {
    app_with(backend, |_| {}).await
}

pub async fn app_with(
    backend: Backend,
    tweak: impl FnOnce(&mut datalayer::config::Settings),
) -> TestApp {
    crate::harness::spawn_app_with(backend, |s| {
        s.redis.command_timeout = Duration::from_secs(2);
        tweak(s)
    })
    .await
}

pub fn client(app: &TestApp) -> AnalyticsServiceClient<Channel> {
    AnalyticsServiceClient::new(app.channel.clone())
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

pub fn ts(ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

pub fn ev(metric: &str, dims: &[(&str, &str)]) -> pb::Event {
    pb::Event {
        metric: metric.into(),
        dimensions: dims
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

pub async fn track(app: &TestApp, events: Vec<pb::Event>) -> pb::TrackResponse {
    client(app)
        .track(timed(pb::TrackRequest { events }))
        .await
        .expect("track answers")
        .into_inner()
}

/// The last hour at minute resolution, filtered and grouped.
pub async fn query(
    app: &TestApp,
    metric: &str,
    filters: Vec<pb::DimensionFilter>,
    group_by: &[&str],
) -> pb::QueryResponse {
    client(app)
        .query(timed(pb::QueryRequest {
            metric: metric.into(),
            from: Some(ts(now_ms() - 3_600_000)),
            resolution: "1m".into(),
            filters,
            group_by: group_by.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }))
        .await
        .expect("query answers")
        .into_inner()
}

pub fn total(series: &pb::Series) -> i64 {
    series.points.iter().map(|p| p.count).sum()
}

/// By the group's value of `dimension`.
pub fn totals(resp: &pb::QueryResponse, dimension: &str) -> HashMap<String, i64> {
    resp.series
        .iter()
        .map(|s| (s.dimensions[dimension].clone(), total(s)))
        .collect()
}

/// 100 writers × 10 events, each of a count of 1 to 3: every one counted,
/// in total and per group.
async fn exact_counts_under_100_concurrent_writers(backend: Backend) {
    let app = app(backend).await;
    let metric = fresh("signals");
    let mut writers = Vec::new();
    for w in 0..100 {
        let mut c = client(&app);
        let metric = metric.clone();
        writers.push(tokio::spawn(async move {
            let events = (0..10)
                .map(|i| {
                    let mut e = ev(&metric, &[("exchange", ["kraken", "binance"][i % 2])]);
                    e.value = Some(pb::event::Value::Count((w % 3 + 1) as i64));
                    e
                })
                .collect();
            let mut req = tonic::Request::new(pb::TrackRequest { events });
            req.set_timeout(Duration::from_secs(10));
            c.track(req).await.expect("track").into_inner().accepted
        }));
    }
    let mut accepted = 0;
    for w in writers {
        accepted += w.await.unwrap();
    }
    assert_eq!(accepted, 1000);
    // Writers 0..100 have counts 1,2,3,1,...: 34×1 + 33×2 + 33×3 = 199 per event slot.
    let want: i64 = (0..100).map(|w| (w % 3 + 1) as i64 * 10).sum();
    let all = query(&app, &metric, vec![], &[]).await;
    assert_eq!(all.series.len(), 1);
    assert_eq!(total(&all.series[0]), want);
    let by = totals(
        &query(&app, &metric, vec![], &["exchange"]).await,
        "exchange",
    );
    assert_eq!(by["kraken"] + by["binance"], want);
    assert_eq!(by["kraken"], want / 2);
}

/// Samples add one to the count, their value to the sum, and set min/max.
async fn samples_keep_count_sum_min_and_max(backend: Backend) {
    let app = app(backend).await;
    let metric = fresh("latency");
    let events = [12.5, -3.0, 40.0, 7.5]
        .into_iter()
        .map(|v| {
            let mut e = ev(&metric, &[("exchange", "kraken")]);
            e.value = Some(pb::event::Value::Sample(v));
            e
        })
        .collect();
    track(&app, events).await;
    let resp = query(&app, &metric, vec![], &[]).await;
    let points: Vec<&pb::Point> = resp.series[0]
        .points
        .iter()
        .filter(|p| p.count > 0)
        .collect();
    let count: i64 = points.iter().map(|p| p.count).sum();
    let sum: f64 = points.iter().map(|p| p.sum).sum();
    let min = points.iter().map(|p| p.min).fold(f64::MAX, f64::min);
    let max = points.iter().map(|p| p.max).fold(f64::MIN, f64::max);
    assert_eq!((count, sum, min, max), (4, 57.0, -3.0, 40.0));
}

/// An event at the last millisecond of a minute and one at the first of
/// the next land in adjacent buckets; the minutes between are zeros, and
/// the hour resolution holds their sum.
async fn bucket_boundaries_and_zero_filled_ranges(backend: Backend) {
    let app = app(backend).await;
    let metric = fresh("edges");
    let minute = now_ms() / 60_000 * 60_000 - 10 * 60_000;
    let at = |ms: u64| {
        let mut e = ev(&metric, &[]);
        e.time = Some(ts(ms));
        e
    };
    track(
        &app,
        vec![
            at(minute - 1),
            at(minute),
            at(minute + 59_999),
            at(minute + 180_000),
        ],
    )
    .await;
    let resp = client(&app)
        .query(timed(pb::QueryRequest {
            metric: metric.clone(),
            from: Some(ts(minute - 60_000)),
            to: Some(ts(minute + 240_000)),
            resolution: "1m".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let counts: Vec<i64> = resp.series[0].points.iter().map(|p| p.count).collect();
    assert_eq!(counts, [1, 2, 0, 0, 1, 0], "{resp:?}");
    let starts: Vec<i64> = resp.series[0]
        .points
        .iter()
        .map(|p| p.time.as_ref().unwrap().seconds)
        .collect();
    assert_eq!(starts[1], (minute / 1000) as i64);
    assert_eq!(starts[1] - starts[0], 60);
    let hourly = client(&app)
        .query(timed(pb::QueryRequest {
            metric,
            from: Some(ts(minute - 60_000)),
            to: Some(ts(minute + 240_000)),
            resolution: "1h".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hourly.resolution, "1h");
    assert_eq!(total(&hourly.series[0]), 4);
}

/// 100,000 distinct ids (and each sent twice) estimate within 2%.
async fn unique_counts_within_two_percent_at_100k(backend: Backend) {
    let app = app(backend).await;
    let metric = fresh("dau");
    let mut c = client(&app);
    for round in 0..2 {
        for batch in 0..100 {
            let events = (0..1000)
                .map(|i| {
                    let mut e = ev(&metric, &[]);
                    e.unique_id = format!("user-{}", batch * 1000 + i);
                    e
                })
                .collect();
            let mut req = tonic::Request::new(pb::TrackRequest { events });
            req.set_timeout(Duration::from_secs(10));
            c.track(req)
                .await
                .unwrap_or_else(|e| panic!("round {round}: {e:?}"));
        }
    }
    let resp = c
        .unique(timed(pb::UniqueRequest {
            metric: metric.clone(),
            from: Some(ts(now_ms() - 3_600_000)),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let error = (resp.count as f64 - 100_000.0).abs() / 100_000.0;
    assert!(
        error < 0.02,
        "estimated {} for 100000 ({error:.4})",
        resp.count
    );
    let all = query(&app, &metric, vec![], &[]).await;
    assert_eq!(total(&all.series[0]), 200_000);
}

/// A Zipf-like top label (value i weighs 10000 / i) over 300 values, with
/// a top list of 100 per bucket: the top 10 are exactly the 10 heaviest.
async fn top_k_of_a_skewed_distribution(backend: Backend) {
    let app = app(backend).await;
    let metric = fresh("blocked");
    let mut events = Vec::new();
    for i in 1..=300u64 {
        let mut e = ev(&metric, &[]);
        e.value = Some(pb::event::Value::Count((10_000 / i) as i64));
        e.top.insert("identifier".into(), format!("id-{i}"));
        events.push(e);
    }
    // Interleave light and heavy so trimming meets both.
    events.reverse();
    for chunk in events.chunks(50) {
        track(&app, chunk.to_vec()).await;
    }
    let resp = client(&app)
        .top(timed(pb::TopRequest {
            metric,
            dimension: "identifier".into(),
            k: 10,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let got: Vec<(String, i64)> = resp
        .entries
        .into_iter()
        .map(|e| (e.value, e.count))
        .collect();
    let want: Vec<(String, i64)> = (1..=10u64)
        .map(|i| (format!("id-{i}"), (10_000 / i) as i64))
        .collect();
    assert_eq!(got, want);
}

/// Top of a dimension without a top list ranks the dimension's series.
async fn top_of_a_dimension_ranks_its_series(backend: Backend) {
    let app = app(backend).await;
    let metric = fresh("commands");
    let mut events = Vec::new();
    for (cmd, n) in [("help", 3), ("price", 7), ("buy", 1)] {
        for _ in 0..n {
            events.push(ev(&metric, &[("command", cmd)]));
        }
    }
    track(&app, events).await;
    let resp = client(&app)
        .top(timed(pb::TopRequest {
            metric,
            dimension: "command".into(),
            k: 2,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let got: Vec<(&str, i64)> = resp
        .entries
        .iter()
        .map(|e| (e.value.as_str(), e.count))
        .collect();
    assert_eq!(got, [("price", 7), ("help", 3)]);
}

/// With room for 5 combinations, 8 distinct ones keep the first 5 and fold
/// 3 events into `__other__`; ListMetrics says so; totals stay exact.
async fn the_combination_cap_folds_into_other(backend: Backend) {
    let app = app_with(backend, |s| s.analytics.max_combinations = 5).await;
    let metric = fresh("capped");
    let first: Vec<pb::Event> = (0..5)
        .map(|i| ev(&metric, &[("k", &format!("v{i}"))]))
        .collect();
    assert_eq!(track(&app, first).await.folded, 0);
    let more: Vec<pb::Event> = (0..8)
        .map(|i| ev(&metric, &[("k", &format!("v{i}"))]))
        .collect();
    assert_eq!(track(&app, more).await.folded, 3);
    let by = totals(&query(&app, &metric, vec![], &["k"]).await, "k");
    assert_eq!(by["__other__"], 3);
    assert_eq!(by["v0"], 2);
    assert_eq!(by.values().sum::<i64>(), 13);
    let metrics = client(&app)
        .list_metrics(timed(pb::ListMetricsRequest {}))
        .await
        .unwrap()
        .into_inner()
        .metrics;
    let m = metrics.iter().find(|m| m.name == metric).expect("listed");
    assert_eq!((m.combinations, m.folded_events), (5, 3));
    assert_eq!(m.resolutions.len(), 3);
    assert!(m.last_tracked.is_some());
}

/// Past `max_metrics`, a Track naming a new metric is refused whole.
async fn the_metric_cap_refuses_new_metrics(backend: Backend) {
    let app = app_with(backend, |s| s.analytics.max_metrics = 2).await;
    let (a, b, c) = (fresh("a"), fresh("b"), fresh("c"));
    track(&app, vec![ev(&a, &[]), ev(&b, &[])]).await;
    let err = client(&app)
        .track(timed(pb::TrackRequest {
            events: vec![ev(&a, &[]), ev(&c, &[])],
        }))
        .await
        .expect_err("a third metric is refused");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains(&c), "{}", err.message());
    // Nothing of the refused batch was written, and known metrics still work.
    assert_eq!(total(&query(&app, &a, vec![], &[]).await.series[0]), 1);
    track(&app, vec![ev(&a, &[]), ev(&b, &[])]).await;
    assert_eq!(total(&query(&app, &a, vec![], &[]).await.series[0]), 2);
}

/// Filters AND across dimensions and OR within one; no match answers a
/// zero series (ungrouped) or none (grouped).
async fn filters_and_groups(backend: Backend) {
    let app = app(backend).await;
    let metric = fresh("orders");
    let mut events = Vec::new();
    for (ex, side, n) in [
        ("kraken", "buy", 2),
        ("kraken", "sell", 3),
        ("bybit", "buy", 5),
    ] {
        for _ in 0..n {
            events.push(ev(&metric, &[("exchange", ex), ("side", side)]));
        }
    }
    track(&app, events).await;
    let f = |d: &str, vs: &[&str]| pb::DimensionFilter {
        dimension: d.into(),
        values: vs.iter().map(|v| v.to_string()).collect(),
    };
    let buys = query(&app, &metric, vec![f("side", &["buy"])], &["exchange"]).await;
    assert_eq!(
        totals(&buys, "exchange"),
        HashMap::from([("kraken".to_string(), 2), ("bybit".to_string(), 5)])
    );
    let both = query(
        &app,
        &metric,
        vec![f("exchange", &["kraken", "bybit"]), f("side", &["sell"])],
        &[],
    )
    .await;
    assert_eq!(total(&both.series[0]), 3);
    let none = query(&app, &metric, vec![f("side", &["hold"])], &[]).await;
    assert_eq!(none.series.len(), 1);
    assert_eq!(total(&none.series[0]), 0);
    assert!(none.series[0].points.len() >= 60, "zeros, not gaps");
    assert!(
        query(&app, &metric, vec![f("side", &["hold"])], &["exchange"])
            .await
            .series
            .is_empty()
    );
}

/// Every bad field is named, at once; nothing is written.
async fn bad_input_names_every_field(backend: Backend) {
    let app = app(backend).await;
    let mut c = client(&app);
    let mut bad = ev("bad metric", &[("", "x")]);
    bad.value = Some(pb::event::Value::Sample(f64::NAN));
    bad.time = Some(ts(now_ms() - 3 * 3_600_000));
    bad.top.insert("ok".into(), "\u{7}".into());
    let mut zero = ev("m", &[]);
    zero.value = Some(pb::event::Value::Count(0));
    let result = c
        .track(timed(pb::TrackRequest {
            events: vec![ev("fine", &[]), bad, zero],
        }))
        .await;
    let status = result.as_ref().expect_err("refused");
    let fields: Vec<String> = tonic_types::StatusExt::get_details_bad_request(status)
        .expect("a BadRequest")
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    for want in [
        "events[1].metric",
        "events[1].dimensions.",
        "events[1].value.sample",
        "events[1].time",
        "events[1].top.ok",
        "events[2].value.count",
    ] {
        assert!(
            fields.iter().any(|f| f == want),
            "{want} missing from {fields:?}"
        );
    }
    assert_bad_field(
        c.track(timed(pb::TrackRequest { events: vec![] })).await,
        "events",
    );
    let too_many = (0..9).map(|i| (format!("d{i}"), "v".to_string())).collect();
    let mut wide = ev("m", &[]);
    wide.dimensions = too_many;
    assert_bad_field(
        c.track(timed(pb::TrackRequest { events: vec![wide] }))
            .await,
        "events[0].dimensions",
    );
    let q = |resolution: &str, from: u64, to: u64| pb::QueryRequest {
        metric: "m".into(),
        from: Some(ts(from)),
        to: Some(ts(to)),
        resolution: resolution.into(),
        ..Default::default()
    };
    let now = now_ms();
    assert_bad_field(
        c.query(timed(q("5m", now - 60_000, now))).await,
        "resolution",
    );
    assert_bad_field(c.query(timed(q("", now, now - 60_000))).await, "from");
    assert_bad_field(
        c.query(timed(q("1m", now - 7 * 86_400_000, now))).await,
        "resolution",
    );
    assert_bad_field(c.query(timed(q("", 0, now))).await, "from");
    assert_bad_field(
        c.top(timed(pb::TopRequest {
            metric: "m".into(),
            dimension: "d".into(),
            k: 101,
            ..Default::default()
        }))
        .await,
        "k",
    );
    assert_bad_field(
        c.unique(timed(pb::UniqueRequest {
            metric: String::new(),
            ..Default::default()
        }))
        .await,
        "metric",
    );
    let names = c
        .list_metrics(timed(pb::ListMetricsRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert!(
        names.metrics.iter().all(|m| m.name != "fine"),
        "a refused batch wrote nothing"
    );
}

conformance!(
    exact_counts_under_100_concurrent_writers,
    samples_keep_count_sum_min_and_max,
    bucket_boundaries_and_zero_filled_ranges,
    unique_counts_within_two_percent_at_100k,
    top_k_of_a_skewed_distribution,
    top_of_a_dimension_ranks_its_series,
    the_combination_cap_folds_into_other,
    the_metric_cap_refuses_new_metrics,
    filters_and_groups,
    bad_input_names_every_field,
);

/// What the invariant tests run: every RPC, fresh metrics.
pub fn workload(app: &TestApp) -> futures::future::BoxFuture<'_, Result<(), tonic::Status>> {
    Box::pin(async move {
        let mut c = client(app);
        let metric = fresh("w");
        let mut e = ev(&metric, &[("k", "v")]);
        e.unique_id = "u".into();
        e.top.insert("who".into(), "x".into());
        let mut s = ev(&metric, &[("k", "v")]);
        s.value = Some(pb::event::Value::Sample(1.5));
        c.track(timed(pb::TrackRequest { events: vec![e, s] }))
            .await?;
        c.query(timed(pb::QueryRequest {
            metric: metric.clone(),
            ..Default::default()
        }))
        .await?;
        c.unique(timed(pb::UniqueRequest {
            metric: metric.clone(),
            ..Default::default()
        }))
        .await?;
        c.top(timed(pb::TopRequest {
            metric,
            dimension: "who".into(),
            ..Default::default()
        }))
        .await?;
        c.list_metrics(timed(pb::ListMetricsRequest {})).await?;
        Ok(())
    })
}
