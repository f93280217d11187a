//! Load generator: a workload through gRPC versus its raw Redis equivalent,
//! at the same concurrency, on the same machine.
//!
//! ```text
//! cargo build --release --bin datalayer --example loadgen
//! target/release/examples/loadgen --workload check --concurrency 64 --seconds 10
//! target/release/examples/loadgen --workload cache-get
//! target/release/examples/loadgen --workload cache-set
//! ```
//!
//! It starts its own `redis-server` and the service binary, measures
//! start-up (spawn → health SERVING) and idle memory, then runs, for the
//! same duration and number of concurrent callers:
//! 1. `service`: the workload over gRPC, one key per caller — `Check`
//!    (GCRA), cache `Get` of a 100-byte value, or cache `Set` of one;
//! 2. `raw`: the Redis equivalent, one connection per caller as a Redis
//!    client library would do it — `EVALSHA` of the same GCRA script, or
//!    plain `GET` / `SET ... PX`;
//! 3. `service @ 50%`: the workload paced at half the rate measured in (1),
//!    for the p99 at half load.

use std::{
    future::Future,
    net::TcpListener,
    path::PathBuf,
    pin::Pin,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use clap::{Parser, ValueEnum};
use datalayer::{
    proto::datalayer::{
        cache::v1::{GetRequest, SetRequest, cache_service_client::CacheServiceClient},
        ratelimit::v1::{
            CheckRequest, Gcra, Limit, check_request::LimitSource, limit,
            rate_limit_service_client::RateLimitServiceClient,
        },
    },
    services::ratelimit::{Algorithm, script_source},
};
use deadpool_redis::redis::{self, AsyncCommands as _};
use hdrhistogram::Histogram;
use tokio::sync::Mutex;
use tonic::transport::Channel;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Workload {
    /// RateLimitService.Check (GCRA) vs raw EVALSHA of the same script.
    Check,
    /// CacheService.Get of a 100-byte value vs raw GET.
    CacheGet,
    /// CacheService.Set of a 100-byte value vs raw SET PX.
    CacheSet,
}

/// One call of a phase: true if it succeeded.
type CallFn = Arc<dyn Fn(usize) -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

const VALUE: [u8; 100] = [b'x'; 100];

#[derive(Parser, Debug)]
#[command(about = "Benchmark a workload through gRPC against raw Redis")]
struct Args {
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Workload::Check)]
    workload: Workload,
    /// Concurrent callers.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds per phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// HTTP/2 connections the callers share.
    #[arg(long, default_value_t = 2)]
    grpc_connections: usize,
    /// The service binary to start.
    #[arg(long, default_value = "target/release/datalayer")]
    service_bin: PathBuf,
}

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[derive(Default)]
struct Report {
    calls: u64,
    errors: u64,
    elapsed: Duration,
    latency: Option<Histogram<u64>>,
}

impl Report {
    fn rate(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64()
    }

    fn print(&self, name: &str) {
        let h = self.latency.as_ref().expect("histogram");
        println!(
            "{name:<16} {:>10.0} calls/s   p50 {:>7.3} ms   p99 {:>7.3} ms   errors {}",
            self.rate(),
            h.value_at_quantile(0.50) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            self.errors
        );
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

/// Runs `concurrency` callers of `one_call` for `duration`; with `pace`,
/// each caller waits for its next slot (so the total rate is fixed).
async fn drive<F, Fut>(
    concurrency: usize,
    duration: Duration,
    pace: Option<Duration>,
    one_call: F,
) -> Report
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let one_call = Arc::new(one_call);
    let merged = Arc::new(Mutex::new((histogram(), 0u64, 0u64)));
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|caller| {
            let one_call = one_call.clone();
            let merged = merged.clone();
            tokio::spawn(async move {
                let mut h = histogram();
                let (mut calls, mut errors) = (0u64, 0u64);
                let mut ticker = pace.map(|p| {
                    let mut t = tokio::time::interval(p);
                    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    t
                });
                while started.elapsed() < duration {
                    if let Some(t) = ticker.as_mut() {
                        t.tick().await;
                    }
                    let t0 = Instant::now();
                    let ok = one_call(caller).await;
                    let _ = h.record(t0.elapsed().as_micros().max(1) as u64);
                    calls += 1;
                    errors += u64::from(!ok);
                }
                let mut m = merged.lock().await;
                let _ = m.0.add(&h);
                m.1 += calls;
                m.2 += errors;
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed();
    let m = merged.lock().await;
    Report {
        calls: m.1,
        errors: m.2,
        elapsed,
        latency: Some(m.0.clone()),
    }
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the `(comm)`; utime and stime are the 14th and 15th.
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    ticks / 100.0
}

/// CPU used by the load generator, the service and Redis during `phase`.
struct CpuSplit {
    pids: [String; 3],
    start: [f64; 3],
}

impl CpuSplit {
    fn start(service: u32, redis: u32) -> Self {
        let pids = ["self".to_owned(), service.to_string(), redis.to_string()];
        let start = [0, 1, 2].map(|i| cpu_seconds(&pids[i]));
        Self { pids, start }
    }

    fn print(&self, report: &Report) {
        let used = [0, 1, 2].map(|i| cpu_seconds(&self.pids[i]) - self.start[i]);
        let per_call = |s: f64| s * 1e6 / report.calls.max(1) as f64;
        println!(
            "                 CPU µs/call: loadgen {:.1}, service {:.1}, redis {:.1}",
            per_call(used[0]),
            per_call(used[1]),
            per_call(used[2])
        );
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

fn check_request(caller: usize) -> CheckRequest {
    CheckRequest {
        reserve: false,
        key: format!("bench-{caller}"),
        limit_source: Some(LimitSource::Limit(Limit {
            algorithm: Some(limit::Algorithm::Gcra(Gcra {
                limit: 1_000_000,
                period: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 0,
                }),
            })),
            fail_mode: 0,
        })),
        cost: None,
    }
}

fn set_request(caller: usize) -> SetRequest {
    SetRequest {
        key: format!("bench-{caller}"),
        value: VALUE.to_vec(),
        ttl: Some(prost_types::Duration {
            seconds: 60,
            nanos: 0,
        }),
        ..Default::default()
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let duration = Duration::from_secs(args.seconds);

    let redis_port = free_port();
    let redis = Guard(
        Command::new("redis-server")
            .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()?,
    );
    let redis_url = format!("redis://127.0.0.1:{redis_port}");
    let client = redis::Client::open(redis_url.as_str())?;
    let started = Instant::now();
    let mut ready = None;
    while started.elapsed() < Duration::from_secs(10) {
        if let Ok(mut c) = client.get_multiplexed_async_connection().await {
            let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut c).await;
            if pong.is_ok() {
                ready = Some(c);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut admin = ready.ok_or("redis-server did not start")?;

    let port = free_port();
    let spawned = Instant::now();
    let service = Guard(
        Command::new(&args.service_bin)
            .env("DATALAYER__SERVER__ADDR", format!("127.0.0.1:{port}"))
            .env("DATALAYER__METRICS__ADDR", "127.0.0.1:0")
            .env("DATALAYER__REDIS__URL", &redis_url)
            .env("DATALAYER__TELEMETRY__LOG_LEVEL", "warn")
            .env("DATALAYER__SERVER__DEFAULT_TIMEOUT", "5s")
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("{}: {e}", args.service_bin.display()))?,
    );
    let endpoint = format!("http://127.0.0.1:{port}");
    let ready_after = loop {
        if let Ok(ch) = Channel::from_shared(endpoint.clone())?.connect().await {
            let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
            if let Ok(r) = health
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                && r.into_inner().status == 1
            {
                break spawned.elapsed();
            }
        }
        if spawned.elapsed() > Duration::from_secs(10) {
            return Err("service did not become SERVING".into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss = rss_kib(service.0.id());

    println!(
        "workload {:?}; machine: {} cores; concurrency {}; {} s per phase; {} gRPC connections",
        args.workload,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        args.concurrency,
        args.seconds,
        args.grpc_connections
    );
    println!(
        "service ready (spawn -> health SERVING): {:.1} ms",
        ready_after.as_secs_f64() * 1000.0
    );
    if let Some(kib) = idle_rss {
        println!("service idle RSS: {:.1} MiB", kib as f64 / 1024.0);
    }

    // 1. Through the service.
    let mut channels = Vec::new();
    for _ in 0..args.grpc_connections.max(1) {
        channels.push(Channel::from_shared(endpoint.clone())?.connect().await?);
    }
    let channels = Arc::new(channels);
    let grpc_call: CallFn = match args.workload {
        Workload::Check => Arc::new(move |caller| {
            let mut client = RateLimitServiceClient::new(channels[caller % channels.len()].clone());
            Box::pin(async move { client.check(check_request(caller)).await.is_ok() })
        }),
        Workload::CacheGet => {
            // One entry per caller, read back on every call.
            for caller in 0..args.concurrency {
                let mut client = CacheServiceClient::new(channels[0].clone());
                client.set(set_request(caller)).await?;
            }
            Arc::new(move |caller| {
                let mut client = CacheServiceClient::new(channels[caller % channels.len()].clone());
                Box::pin(async move {
                    client
                        .get(GetRequest {
                            key: format!("bench-{caller}"),
                        })
                        .await
                        .is_ok_and(|r| r.into_inner().found)
                })
            })
        }
        Workload::CacheSet => Arc::new(move |caller| {
            let mut client = CacheServiceClient::new(channels[caller % channels.len()].clone());
            Box::pin(async move {
                client
                    .set(set_request(caller))
                    .await
                    .is_ok_and(|r| r.into_inner().stored)
            })
        }),
    };
    let grpc_call = move |caller: usize| grpc_call(caller);
    // Warm up connections, scripts and caches.
    drive(
        args.concurrency,
        Duration::from_secs(1),
        None,
        grpc_call.clone(),
    )
    .await;
    let cpu = CpuSplit::start(service.0.id(), redis.0.id());
    let service_report = drive(args.concurrency, duration, None, grpc_call.clone()).await;
    service_report.print("service");
    cpu.print(&service_report);
    if let Some(kib) = rss_kib(service.0.id()) {
        println!("service RSS after load: {:.1} MiB", kib as f64 / 1024.0);
    }

    // 2. The raw Redis equivalent, one connection per caller.
    let (source, sha) = script_source(Algorithm::Gcra);
    let _: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(source)
        .query_async(&mut admin)
        .await?;
    let mut raw_conns = Vec::new();
    for caller in 0..args.concurrency {
        // Multiplexed connections used one call at a time each: the
        // request/response pattern of a connection-per-caller client.
        raw_conns.push(client.get_multiplexed_async_connection().await?);
        let _: () = admin.set(format!("bench-raw-{caller}"), &VALUE[..]).await?;
    }
    let raw_conns = Arc::new(raw_conns);
    let sha = sha.to_owned();
    let workload = args.workload;
    let raw_call = move |caller: usize| {
        let mut conn = raw_conns[caller].clone();
        let cmd = match workload {
            Workload::Check => {
                let mut cmd = redis::cmd("EVALSHA");
                cmd.arg(&sha)
                    .arg(1)
                    .arg(format!("dl:default:rl:{{bench-{caller}}}:inline:gcra-raw"))
                    .arg(1_000_000u64)
                    .arg(1_000_000u64)
                    .arg(1u64);
                cmd
            }
            Workload::CacheGet => {
                let mut cmd = redis::cmd("GET");
                cmd.arg(format!("bench-raw-{caller}"));
                cmd
            }
            Workload::CacheSet => {
                let mut cmd = redis::cmd("SET");
                cmd.arg(format!("bench-raw-{caller}"))
                    .arg(&VALUE[..])
                    .arg("PX")
                    .arg(60_000);
                cmd
            }
        };
        async move {
            let r: redis::RedisResult<redis::Value> = cmd.query_async(&mut conn).await;
            matches!(r, Ok(v) if v != redis::Value::Nil)
        }
    };
    drive(
        args.concurrency,
        Duration::from_secs(1),
        None,
        raw_call.clone(),
    )
    .await;
    let cpu = CpuSplit::start(service.0.id(), redis.0.id());
    let raw_report = drive(args.concurrency, duration, None, raw_call).await;
    raw_report.print(match args.workload {
        Workload::Check => "raw EVALSHA",
        Workload::CacheGet => "raw GET",
        Workload::CacheSet => "raw SET",
    });
    cpu.print(&raw_report);

    println!(
        "ratio service/raw: {:.2}",
        service_report.rate() / raw_report.rate()
    );

    // 3. Half of the service's maximum rate, paced.
    let half_rate = service_report.rate() / 2.0;
    let per_caller = Duration::from_secs_f64(args.concurrency as f64 / half_rate);
    let half = drive(args.concurrency, duration, Some(per_caller), grpc_call).await;
    half.print("service @ 50%");
    Ok(())
}
