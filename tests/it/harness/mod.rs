//! Test harness: real `redis-server`s (see [`redis`]), and the service on
//! port 0 with typed clients. No mocks: what passes here passes on the wire.
//!
//! Every app gets a namespace of its own (`keys.namespace`), so tests share
//! one Redis and one cluster without seeing each other's keys.

#![allow(dead_code)]

pub mod channel;
pub mod raw;
pub mod redis;

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use datalayer::{
    config::Settings,
    proto::datalayer::{
        cache::v1::cache_service_client::CacheServiceClient,
        ratelimit::v1::rate_limit_service_client::RateLimitServiceClient,
        session::v1::session_service_client::SessionServiceClient,
    },
    services::ratelimit::{
        PolicySpec,
        settings::{AlgorithmName, FailModeName},
    },
    startup::Application,
    store::redis::{RedisMode, RedisUrl},
};
use tokio::sync::oneshot;
use tonic::Code;

pub use channel::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_types::StatusExt;

pub use redis::{RedisCluster, RedisServer, shared_cluster, shared_redis};

/// Where an app keeps its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The in-process store.
    Memory,
    /// The run's shared `redis-server`.
    Redis,
    /// The run's shared 3-master cluster.
    Cluster,
    /// A `redis-server` of the test's own, to kill, freeze or flush.
    OwnRedis,
}

/// A namespace no other test uses.
pub fn unique_namespace(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub namespace: String,
    pub channel: Channel,
    pub ratelimit: RateLimitServiceClient<Channel>,
    pub cache: CacheServiceClient<Channel>,
    pub sessions: SessionServiceClient<Channel>,
    pub health: HealthClient<Channel>,
    pub backend: Backend,
    own_redis: Option<RedisServer>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

/// Policies every test app has.
pub fn test_policies(settings: &mut Settings) {
    let mut policy = |name: &str, spec: PolicySpec| {
        settings.ratelimit.policies.insert(name.to_owned(), spec);
    };
    policy(
        "auth",
        PolicySpec {
            algorithm: Some(AlgorithmName::SlidingWindow),
            limit: Some(5),
            window: Some(Duration::from_secs(60)),
            ..Default::default()
        },
    );
    policy(
        "open",
        PolicySpec {
            algorithm: Some(AlgorithmName::Gcra),
            limit: Some(100),
            period: Some(Duration::from_secs(60)),
            fail_mode: Some(FailModeName::Open),
            ..Default::default()
        },
    );
    policy(
        "closed",
        PolicySpec {
            algorithm: Some(AlgorithmName::Gcra),
            limit: Some(100),
            period: Some(Duration::from_secs(60)),
            fail_mode: Some(FailModeName::Closed),
            ..Default::default()
        },
    );
}

/// Settings every test app starts from: port 0, fast probes, short Redis
/// timeouts, the test policies, a namespace of its own.
pub fn test_settings() -> Settings {
    let mut settings = Settings::default();
    settings.server.addr = "127.0.0.1:0".parse().unwrap();
    settings.metrics.addr = "127.0.0.1:0".parse().unwrap();
    settings.health.probe_interval = Duration::from_millis(100);
    settings.health.probe_timeout = Duration::from_millis(100);
    settings.redis.connect_timeout = Duration::from_millis(200);
    settings.redis.response_timeout = Duration::from_millis(500);
    settings.keys.namespace = unique_namespace("t");
    test_policies(&mut settings);
    settings
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

/// Starts the service on 127.0.0.1:0 on `backend`, after `tweak` has
/// adjusted the settings.
pub async fn spawn_app_with(backend: Backend, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = test_settings();
    let own_redis = match backend {
        Backend::Memory => None,
        Backend::Redis => {
            settings.redis.url = Some(RedisUrl::new(shared_redis().url()));
            None
        }
        Backend::Cluster => {
            settings.redis.url = Some(RedisUrl::new(shared_cluster().url()));
            settings.redis.mode = RedisMode::Cluster;
            None
        }
        Backend::OwnRedis => {
            let redis = RedisServer::start();
            settings.redis.url = Some(RedisUrl::new(redis.url()));
            Some(redis)
        }
    };
    tweak(&mut settings);
    start(settings, backend, own_redis).await
}

/// Starts the service with exactly `settings`.
pub async fn start(
    settings: Settings,
    backend: Backend,
    own_redis: Option<RedisServer>,
) -> TestApp {
    let namespace = settings.keys.namespace.clone();
    let app = Application::build(settings).await.expect("app builds");
    let addr = app.local_addr();
    let metrics_addr = app.metrics_addr();
    let (tx, rx) = oneshot::channel();
    let server = tokio::spawn(async move {
        app.run_until_stopped(async {
            let _ = rx.await;
        })
        .await
        .expect("server runs");
    });
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connects to the service");
    let channel = Channel::new(channel);
    TestApp {
        addr,
        metrics_addr,
        namespace,
        ratelimit: RateLimitServiceClient::new(channel.clone()),
        cache: CacheServiceClient::new(channel.clone()),
        sessions: SessionServiceClient::new(channel.clone()),
        health: HealthClient::new(channel.clone()),
        channel,
        backend,
        own_redis,
        shutdown: Some(tx),
        server: Some(server),
    }
}

impl TestApp {
    /// The same server seen by a caller with `key`, whose tenant is
    /// `namespace` (the view's keys are that tenant's); dropping the view
    /// leaves the server running.
    pub fn as_key(&self, key: &str, namespace: &str) -> TestApp {
        let channel = self.channel.with_key(key);
        TestApp {
            addr: self.addr,
            metrics_addr: self.metrics_addr,
            namespace: namespace.to_owned(),
            ratelimit: RateLimitServiceClient::new(channel.clone()),
            cache: CacheServiceClient::new(channel.clone()),
            sessions: SessionServiceClient::new(channel.clone()),
            health: HealthClient::new(channel.clone()),
            channel,
            backend: self.backend,
            own_redis: None,
            shutdown: None,
            server: None,
        }
    }

    /// The Redis server behind a `Redis` or `OwnRedis` app, to inspect.
    pub fn redis(&self) -> &RedisServer {
        match self.backend {
            Backend::Redis => shared_redis(),
            Backend::OwnRedis => self.own_redis.as_ref().expect("own redis"),
            other => panic!("{other:?} has no single Redis server"),
        }
    }

    /// The app's own Redis server, to kill, freeze or flush.
    pub fn own_redis(&mut self) -> &mut RedisServer {
        self.own_redis.as_mut().expect("an OwnRedis app")
    }

    /// Takes the own Redis server away (it stops when dropped).
    pub fn take_own_redis(&mut self) -> Option<RedisServer> {
        self.own_redis.take()
    }

    /// The pattern matching every key of this app.
    pub fn key_pattern(&self) -> String {
        format!("dl:{}:*", self.namespace)
    }

    /// Every key this app wrote, on whatever backend holds them.
    pub fn keys(&self) -> Vec<String> {
        match self.backend {
            Backend::Cluster => shared_cluster().keys(&self.key_pattern()),
            _ => self.redis().keys(&self.key_pattern()),
        }
    }

    /// The health status of `service` ("" for the whole server).
    pub async fn health_status(&self, service: &str) -> ServingStatus {
        let mut health = self.health.clone();
        let reply = health
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .expect("health answers");
        ServingStatus::try_from(reply.into_inner().status).expect("known status")
    }

    /// Waits (bounded) until health reports `want` for the whole server.
    pub async fn wait_for_health(&self, want: ServingStatus) {
        let started = Instant::now();
        loop {
            if self.health_status("").await == want {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "health never became {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the server and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Generates one `#[tokio::test]` per backend for each listed case, in
/// modules `memory`, `redis` and `cluster` (the shared 3-master cluster):
/// `conformance!(case_a, case_b)` runs `case_a(Backend::Memory)` as
/// `<module>::memory::case_a`, and so on.
#[macro_export]
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case($crate::harness::Backend::Memory).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case($crate::harness::Backend::Redis).await;
                }
            )*
        }
        mod cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case($crate::harness::Backend::Cluster).await;
                }
            )*
        }
    };
}

/// Asserts `result` is INVALID_ARGUMENT with a BadRequest violation of `field`.
pub fn assert_bad_field(
    result: Result<tonic::Response<impl std::fmt::Debug>, tonic::Status>,
    field: &str,
) {
    let status = result.expect_err("bad input is rejected");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let bad_request = status
        .get_details_bad_request()
        .expect("a google.rpc.BadRequest detail");
    let fields: Vec<&str> = bad_request
        .field_violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    assert!(
        fields.contains(&field),
        "expected a violation of `{field}`, got {fields:?}"
    );
}

/// The fields a BadRequest detail of `status` names, in order.
pub fn bad_fields(status: &tonic::Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .expect("a google.rpc.BadRequest detail")
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect()
}

/// A protobuf `Duration`.
pub fn pb_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// `msg` as a request with a 1 s deadline, as a careful client sends it.
pub fn timed<T>(msg: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(msg);
    request.set_timeout(Duration::from_secs(1));
    request
}
