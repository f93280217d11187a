//! Test harness: a real `redis-server` on a free port, and the service on
//! port 0 with typed clients. No mocks: what passes here passes on the wire.

#![allow(dead_code)]

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use datalayer::{
    config::{RedisUrl, Settings},
    proto::{
        cache_service_client::CacheServiceClient,
        rate_limit_service_client::RateLimitServiceClient,
        session_service_client::SessionServiceClient,
    },
    ratelimit::PolicyLimitSpec,
    startup::Application,
};
use tokio::sync::oneshot;
use tonic::{Code, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_types::StatusExt;

/// A `redis-server` child process on a free port, killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    extra_args: Vec<String>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    pub fn start_with(extra_args: &[&str]) -> Self {
        let mut server = Self {
            port: free_port(),
            child: None,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// (Re)starts the process on the same port and waits for PONG.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        self.child = Some(child);
        let started = Instant::now();
        while !self.answers_ping() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process (like a crash) and waits until the port is closed.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn signal(&self, sig: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .args([sig, &child.id().to_string()])
                .status()
                .expect("kill");
            assert!(status.success());
        }
    }

    /// Freezes the process: connections stay open but nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn answers_ping(&self) -> bool {
        self.command("PING\r\n")
            .map(|reply| reply.starts_with("+PONG"))
            .unwrap_or(false)
    }

    /// Sends one raw RESP command and returns the first reply chunk.
    pub fn command(&self, resp: &str) -> std::io::Result<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.write_all(resp.as_bytes())?;
        let mut buf = [0u8; 65536];
        let n = stream.read(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Runs a command given as words, in RESP.
    pub fn cmd(&self, words: &[&str]) -> String {
        let mut resp = format!("*{}\r\n", words.len());
        for w in words {
            resp.push_str(&format!("${}\r\n{}\r\n", w.len(), w));
        }
        self.command(&resp).expect("redis answers")
    }

    /// The keys matching `pattern` (`KEYS`, fine for a test's tiny Redis).
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        self.cmd(&["KEYS", pattern])
            .split("\r\n")
            .skip(1)
            .filter(|line| !line.is_empty() && !line.starts_with('$'))
            .map(str::to_owned)
            .collect()
    }

    /// An integer reply, e.g. of `PTTL` or `ZCARD`.
    pub fn int(&self, words: &[&str]) -> i64 {
        let reply = self.cmd(words);
        reply
            .trim_start_matches(':')
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{words:?} answered {reply:?}, not an integer"))
    }

    pub fn pttl(&self, key: &str) -> i64 {
        self.int(&["PTTL", key])
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.resume();
        self.kill();
    }
}

/// A 3-master Redis Cluster of `redis-server` processes on free ports, made
/// with `redis-cli --cluster create`; killed on drop.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    pub fn start() -> Self {
        Self::start_with_replicas(0)
    }

    /// 3 masters, each with `replicas` replicas.
    pub fn start_with_replicas(replicas: usize) -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let nodes: Vec<RedisServer> = (0..3 * (1 + replicas))
            .map(|i| {
                let node_dir = dir.path().join(format!("node{i}"));
                std::fs::create_dir_all(&node_dir).expect("node dir");
                let node_dir = node_dir.to_string_lossy().into_owned();
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "1000",
                    // Slots of a dead master fail; the others keep serving.
                    "--cluster-require-full-coverage",
                    "no",
                    "--dir",
                    &node_dir,
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let status = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli on PATH");
        assert!(status.success(), "redis-cli --cluster create failed");
        let cluster = Self { nodes, _dir: dir };
        cluster.wait_until_ok();
        cluster
    }

    /// Waits until every running node reports `cluster_state:ok`.
    pub fn wait_until_ok(&self) {
        let started = Instant::now();
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            while !node.cmd(&["CLUSTER", "INFO"]).contains("cluster_state:ok") {
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "the cluster never became ok"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Seed URLs, comma-separated, as `redis.url` takes them.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node serving `key`'s slot.
    pub fn node_for(&mut self, key: &str) -> &mut RedisServer {
        let slot = self.nodes[0].int(&["CLUSTER", "KEYSLOT", key]);
        let index = self
            .nodes
            .iter()
            .position(|n| {
                // `CLUSTER MYSHARDID` is 7.2+; read our own slot ranges instead.
                let nodes = n.cmd(&["CLUSTER", "NODES"]);
                nodes
                    .lines()
                    .find(|l| l.contains("myself"))
                    .map(|l| {
                        l.split_whitespace().skip(8).any(|range| {
                            let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                            match (lo.parse::<i64>(), hi.parse::<i64>()) {
                                (Ok(lo), Ok(hi)) => (lo..=hi).contains(&slot),
                                _ => false,
                            }
                        })
                    })
                    .unwrap_or(false)
            })
            .expect("a node serves every slot");
        &mut self.nodes[index]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Memory,
    Redis,
    Cluster,
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub ratelimit: RateLimitServiceClient<Channel>,
    pub cache: CacheServiceClient<Channel>,
    pub sessions: SessionServiceClient<Channel>,
    pub health: HealthClient<Channel>,
    pub redis: Option<RedisServer>,
    pub cluster: Option<RedisCluster>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

/// Policies every test app has.
pub fn test_policies(settings: &mut Settings) {
    let mut policy = |name: &str, spec: PolicyLimitSpec| {
        settings.ratelimit.policies.insert(name.to_owned(), spec);
    };
    policy(
        "auth",
        PolicyLimitSpec {
            algorithm: Some("sliding_window".into()),
            limit: Some(5),
            window: Some(Duration::from_secs(60)),
            ..Default::default()
        },
    );
    policy(
        "open",
        PolicyLimitSpec {
            algorithm: Some("gcra".into()),
            limit: Some(100),
            period: Some(Duration::from_secs(60)),
            fail_mode: Some("open".into()),
            ..Default::default()
        },
    );
    policy(
        "closed",
        PolicyLimitSpec {
            algorithm: Some("gcra".into()),
            limit: Some(100),
            period: Some(Duration::from_secs(60)),
            fail_mode: Some("closed".into()),
            ..Default::default()
        },
    );
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

/// Starts the service on 127.0.0.1:0 (with its own Redis for
/// [`Backend::Redis`]) after `tweak` has adjusted the settings.
pub async fn spawn_app_with(backend: Backend, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = Settings::default();
    settings.server.addr = "127.0.0.1:0".parse().unwrap();
    settings.metrics.addr = "127.0.0.1:0".parse().unwrap();
    settings.health.probe_interval = Duration::from_millis(100);
    settings.health.probe_timeout = Duration::from_millis(100);
    settings.redis.connect_timeout = Duration::from_millis(200);
    settings.redis.wait_timeout = Duration::from_millis(200);
    settings.redis.response_timeout = Duration::from_millis(500);
    test_policies(&mut settings);
    let (redis, cluster) = match backend {
        Backend::Memory => (None, None),
        Backend::Redis => {
            let redis = RedisServer::start();
            settings.redis.url = Some(RedisUrl::new(redis.url()));
            (Some(redis), None)
        }
        Backend::Cluster => {
            let cluster = RedisCluster::start();
            settings.redis.url = Some(RedisUrl::new(cluster.url()));
            settings.redis.mode = datalayer::config::RedisMode::Cluster;
            (None, Some(cluster))
        }
    };
    tweak(&mut settings);

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
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connects to the service");
    TestApp {
        addr,
        metrics_addr,
        ratelimit: RateLimitServiceClient::new(channel.clone()),
        cache: CacheServiceClient::new(channel.clone()),
        sessions: SessionServiceClient::new(channel.clone()),
        health: HealthClient::new(channel),
        redis,
        cluster,
        shutdown: Some(tx),
        server: Some(server),
    }
}

impl TestApp {
    pub fn redis(&mut self) -> &mut RedisServer {
        self.redis.as_mut().expect("a Redis-backed app")
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

/// Generates one `#[tokio::test]` per backend for each listed case:
/// `conformance!(case_a, case_b)` runs `case_a(Backend::Memory)` as
/// `memory::case_a`, `case_a(Backend::Redis)` as `redis::case_a`, and
/// `case_a(Backend::Cluster)` as `cluster::case_a` (a 3-master cluster).
#[macro_export]
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case($crate::common::Backend::Memory).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case($crate::common::Backend::Redis).await;
                }
            )*
        }
        mod cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case($crate::common::Backend::Cluster).await;
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

/// A protobuf `Duration`.
pub fn pb_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}
