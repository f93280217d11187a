//! Envoy's `ShouldRateLimit` through the real gRPC surface, on memory,
//! Redis and a cluster: per-value counters, the overall code, hits_addend,
//! shadow mode, unlimited and blocked limits, replaces, unknown domains,
//! response headers, bad input, and a configuration reloaded from its file.

mod overrides;

use std::time::Duration;

use datalayer::proto::envoy::extensions::common::ratelimit::v3::{
    RateLimitDescriptor, rate_limit_descriptor::Entry,
};
use datalayer::proto::envoy::service::ratelimit::v3::{
    RateLimitRequest, RateLimitResponse, rate_limit_response::Code,
    rate_limit_service_client::RateLimitServiceClient,
};

use crate::harness::{Backend, Channel, TestApp, assert_bad_field, spawn_app_with, timed};
use crate::invariants::fresh;

const CONFIG: &str = r#"
domain: DOMAIN
descriptors:
  - key: user_id
    rate_limit: {unit: minute, requests_per_unit: 3, name: per-user}
  - key: path
    value: /login
    rate_limit: {unit: second, requests_per_unit: 100, name: login, replaces: [{name: per-user}]}
  - key: path
    value: /beta/*
    shadow_mode: true
    rate_limit: {unit: hour, requests_per_unit: 1}
  - key: path
    value: /closed
    rate_limit: {unit: hour, requests_per_unit: 0}
  - key: internal
    rate_limit: {unlimited: true}
  - key: api_key
    descriptors:
      - key: method
        value: POST
        rate_limit: {unit: minute, requests_per_unit: 2, algorithm: sliding_window}
"#;

struct Envoy {
    app: TestApp,
    domain: String,
    file: tempfile::NamedTempFile,
}

async fn envoy(
    backend: Backend,
    tweak: impl FnOnce(&mut datalayer::config::Settings) + Send,
) -> Envoy {
    let domain = fresh("d");
    let file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    std::fs::write(file.path(), CONFIG.replace("DOMAIN", &domain)).unwrap();
    let path = file.path().to_owned();
    let app = spawn_app_with(backend, move |s| {
        s.ratelimit.envoy.config_files = vec![path];
        s.ratelimit.envoy.reload_interval = Duration::from_secs(1);
        s.redis.command_timeout = Duration::from_secs(1);
        tweak(s);
    })
    .await;
    Envoy { app, domain, file }
}

fn d(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| Entry {
                key: (*k).into(),
                value: (*v).into(),
            })
            .collect(),
        ..Default::default()
    }
}

impl Envoy {
    fn client(&self) -> RateLimitServiceClient<Channel> {
        RateLimitServiceClient::new(self.app.channel.clone())
    }

    async fn ask(&self, descriptors: Vec<RateLimitDescriptor>, hits: u32) -> RateLimitResponse {
        self.client()
            .should_rate_limit(timed(RateLimitRequest {
                domain: self.domain.clone(),
                descriptors,
                hits_addend: hits,
            }))
            .await
            .expect("ShouldRateLimit answers")
            .into_inner()
    }
}

fn codes(r: &RateLimitResponse) -> Vec<i32> {
    r.statuses.iter().map(|s| s.code).collect()
}

const OK: i32 = Code::Ok as i32;
const OVER: i32 = Code::OverLimit as i32;

/// Each value has its own counter; limit, remaining and reset are told;
/// the overall code is the worst of the descriptors, in request order.
async fn values_count_apart_and_the_worst_decides(backend: Backend) {
    let e = envoy(backend, |_| {}).await;
    let user = fresh("u");
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let r = e.ask(vec![d(&[("user_id", &user)])], 0).await;
        assert_eq!(r.overall_code, OK);
        let s = &r.statuses[0];
        let limit = s.current_limit.as_ref().unwrap();
        assert_eq!(
            (limit.requests_per_unit, limit.name.as_str()),
            (3, "per-user")
        );
        assert!(s.duration_until_reset.as_ref().unwrap().seconds <= 60);
        remaining.push(s.limit_remaining);
    }
    assert_eq!(remaining, [2, 1, 0]);
    let both = e
        .ask(vec![d(&[("path", "/other")]), d(&[("user_id", &user)])], 0)
        .await;
    assert_eq!(codes(&both), [OK, OVER]);
    assert_eq!(both.overall_code, OVER);
    assert!(both.statuses[0].current_limit.is_none(), "no rule matched");
    let other = e.ask(vec![d(&[("user_id", &fresh("u"))])], 0).await;
    assert_eq!(other.overall_code, OK);
    // Nested entries: the limit on the node the last entry reaches.
    let key = fresh("k");
    let post = |m: &'static str| d(&[("api_key", key.as_str()), ("method", m)]);
    assert_eq!(
        e.ask(vec![post("POST"), post("POST")], 0)
            .await
            .overall_code,
        OK
    );
    assert_eq!(e.ask(vec![post("POST")], 0).await.overall_code, OVER);
    assert!(
        e.ask(vec![post("GET")], 0).await.statuses[0]
            .current_limit
            .is_none()
    );
}

/// `hits_addend` of the request counts for every descriptor (0 means 1);
/// a descriptor's own counts instead, and its 0 checks without counting.
async fn hits_addend_per_request_and_descriptor(backend: Backend) {
    let e = envoy(backend, |_| {}).await;
    let user = fresh("u");
    let r = e.ask(vec![d(&[("user_id", &user)])], 2).await;
    assert_eq!(r.statuses[0].limit_remaining, 1);
    let mut peek = d(&[("user_id", &user)]);
    peek.hits_addend = Some(0);
    let r = e.ask(vec![peek], 5).await;
    assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (OK, 1));
    let r = e.ask(vec![d(&[("user_id", &user)])], 2).await;
    assert_eq!(r.overall_code, OVER);
}

/// Shadow mode counts and reports but answers OK; `unlimited` is always
/// OK; `requests_per_unit: 0` is always over; a rule that replaces another
/// by name switches it off for that request; unknown domains are OK.
async fn shadow_unlimited_blocked_replaces_and_unknown(backend: Backend) {
    let e = envoy(backend, |_| {}).await;
    e.ask(vec![d(&[("path", "/beta/x")])], 0).await;
    let beta = e.ask(vec![d(&[("path", "/beta/x")])], 0).await;
    assert_eq!((beta.overall_code, codes(&beta)), (OK, vec![OK]));
    assert_eq!(beta.statuses[0].limit_remaining, 0);
    let free = e.ask(vec![d(&[("internal", "yes")])], 1000).await;
    assert_eq!(
        (free.overall_code, free.statuses[0].limit_remaining),
        (OK, u32::MAX)
    );
    let closed = e.ask(vec![d(&[("path", "/closed")])], 0).await;
    assert_eq!(closed.overall_code, OVER);
    let user = fresh("u");
    for _ in 0..3 {
        e.ask(vec![d(&[("user_id", &user)])], 0).await;
    }
    let replaced = e
        .ask(vec![d(&[("user_id", &user)]), d(&[("path", "/login")])], 0)
        .await;
    assert_eq!(codes(&replaced), [OK, OK], "per-user is replaced by login");
    let unknown = e
        .client()
        .should_rate_limit(timed(RateLimitRequest {
            domain: fresh("nobody"),
            descriptors: vec![d(&[("user_id", "x")])],
            hits_addend: 0,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unknown.overall_code, OK);
}

/// Empty domains, descriptors or entries are INVALID_ARGUMENT naming the
/// field.
async fn bad_requests_name_the_field(backend: Backend) {
    let e = envoy(backend, |_| {}).await;
    let ask = |req: RateLimitRequest| {
        let mut c = e.client();
        async move { c.should_rate_limit(timed(req)).await }
    };
    assert_bad_field(
        ask(RateLimitRequest {
            domain: String::new(),
            descriptors: vec![d(&[("a", "b")])],
            hits_addend: 0,
        })
        .await,
        "domain",
    );
    assert_bad_field(
        ask(RateLimitRequest {
            domain: e.domain.clone(),
            descriptors: vec![],
            hits_addend: 0,
        })
        .await,
        "descriptors",
    );
    assert_bad_field(
        ask(RateLimitRequest {
            domain: e.domain.clone(),
            descriptors: vec![d(&[])],
            hits_addend: 0,
        })
        .await,
        "descriptors[0].entries",
    );
}

crate::conformance!(
    values_count_apart_and_the_worst_decides,
    hits_addend_per_request_and_descriptor,
    shadow_unlimited_blocked_replaces_and_unknown,
    bad_requests_name_the_field,
);

/// With `response_headers`, the most constrained limit's headers are
/// added; with the global shadow mode, the overall code is OK while the
/// statuses still say OVER_LIMIT.
#[tokio::test]
async fn headers_and_global_shadow_mode() {
    let e = envoy(Backend::Memory, |s| {
        s.ratelimit.envoy.response_headers = true;
        s.ratelimit.envoy.shadow_mode = true;
    })
    .await;
    let user = fresh("u");
    let r = e.ask(vec![d(&[("user_id", &user)])], 3).await;
    let h: std::collections::BTreeMap<&str, &str> = r
        .response_headers_to_add
        .iter()
        .map(|h| (h.key.as_str(), h.value.as_str()))
        .collect();
    assert_eq!(h["RateLimit-Limit"], "3");
    assert_eq!(h["RateLimit-Remaining"], "0");
    assert!(h["RateLimit-Reset"].parse::<u64>().unwrap() <= 60);
    let over = e.ask(vec![d(&[("user_id", &user)])], 0).await;
    assert_eq!((over.overall_code, codes(&over)), (OK, vec![OVER]));
}

/// A changed file is picked up; one that does not validate is refused and
/// the configuration before it stays.
#[tokio::test]
async fn the_configuration_reloads_from_its_file() {
    let e = envoy(Backend::Memory, |_| {}).await;
    let user = fresh("u");
    std::fs::write(
        e.file.path(),
        format!(
            "domain: {}\ndescriptors:\n  - key: user_id\n    rate_limit: {{unit: minute, requests_per_unit: 1}}\n",
            e.domain
        ),
    )
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = e.ask(vec![d(&[("user_id", &fresh("probe"))])], 0).await;
        if r.statuses[0]
            .current_limit
            .as_ref()
            .is_some_and(|l| l.requests_per_unit == 1)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new file was not loaded"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    std::fs::write(e.file.path(), "domain: ''\nnonsense: [").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = e.ask(vec![d(&[("user_id", &user)])], 0).await;
    assert_eq!(
        r.statuses[0]
            .current_limit
            .as_ref()
            .unwrap()
            .requests_per_unit,
        1
    );
}

/// A file that does not validate stops start-up with every problem named.
#[tokio::test]
async fn a_bad_file_stops_start_up_naming_the_path() {
    let file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    std::fs::write(
        file.path(),
        "domain: x\ndescriptors:\n  - key: a\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n",
    )
    .unwrap();
    let mut settings = crate::harness::test_settings();
    settings.ratelimit.envoy.config_files = vec![file.path().to_owned()];
    let direct =
        datalayer::services::ratelimit::envoy::config::load(&settings.ratelimit.envoy.config_files);
    assert!(direct.is_err(), "the file does not validate");
    let err = datalayer::startup::Application::build(settings)
        .await
        .err()
        .expect("start-up refuses the file")
        .to_string();
    assert!(err.contains("descriptors[0].rate_limit.unit"), "{err}");
}
