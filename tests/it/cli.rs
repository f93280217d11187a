//! The `datalayer` binary as an operator meets it: `--help`, `--version`,
//! configuration layering (defaults < file < env), start-up errors that name
//! the key, secrets that never print, and a clean exit on SIGTERM.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use datalayer::proto::datalayer::ratelimit::v1::{
    CheckRequest, check_request::LimitSource, rate_limit_service_client::RateLimitServiceClient,
};

const BIN: &str = env!("CARGO_BIN_EXE_datalayer");

fn datalayer(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("RUST_LOG")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        // Tests run in parallel: never the fixed default metrics port.
        .env("DATALAYER__METRICS__ADDR", "127.0.0.1:0");
    for (key, value) in env {
        cmd.env(key, value);
    }
    cmd
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    datalayer(args, env).output().expect("binary runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn help_and_version() {
    let version = run(&["--version"], &[]);
    assert!(version.status.success());
    let printed = String::from_utf8_lossy(&version.stdout).trim().to_owned();
    let prefix = format!("datalayer {} (commit ", env!("CARGO_PKG_VERSION"));
    let commit = printed
        .strip_prefix(&prefix)
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("`{printed}` is not `{prefix}<commit>)`"));
    assert!(
        commit == "unknown" || (commit.len() >= 7 && commit.bytes().all(|b| b.is_ascii_hexdigit())),
        "{commit}"
    );
    let help = run(&["--help"], &[]);
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("--config <FILE>"), "{text}");
    assert!(text.contains("DATALAYER_CONFIG"), "{text}");
}

#[test]
fn invalid_settings_name_the_key_and_exit_2() {
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (
            vec![("DATALAYER__REDIS__CONNECTIONS", "0")],
            "redis.connections",
        ),
        (
            vec![("DATALAYER__SERVER__DEFAULT_TIMEOUT", "0s")],
            "server.default_timeout",
        ),
        (
            vec![("DATALAYER__KEYS__NAMESPACE", "has space")],
            "keys.namespace",
        ),
        (
            vec![
                (
                    "DATALAYER__RATELIMIT__POLICIES__AUTH__ALGORITHM",
                    "fixed_window",
                ),
                ("DATALAYER__RATELIMIT__POLICIES__AUTH__LIMIT", "0"),
                ("DATALAYER__RATELIMIT__POLICIES__AUTH__WINDOW", "1m"),
            ],
            "ratelimit.policies.auth.limit",
        ),
        (
            vec![("DATALAYER__RATELIMIT__POLICIES__AUTH__ALGORITHM", "leaky")],
            "ratelimit.policies.auth.algorithm",
        ),
        (
            vec![("DATALAYER__SERVER__ADDR", "not-an-address")],
            "server.addr",
        ),
        (
            vec![
                ("DATALAYER__REDIS__URL", "redis://127.0.0.1:1"),
                ("DATALAYER__REDIS__TLS_CA_FILE", "/etc/ca.pem"),
            ],
            "redis.tls_ca_file",
        ),
        (
            vec![("DATALAYER__REDIS__URL", "redis://a:1,redis://b:2")],
            "redis.url",
        ),
        (
            vec![("DATALAYER__METRICS__ADDR", "0.0.0.0:50051")],
            "metrics.addr",
        ),
    ];
    for (env, key) in cases {
        let output = run(&[], &env);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{env:?}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(key),
            "{env:?} should name {key}: {}",
            stderr(&output)
        );
    }
}

/// Keys that were removed say so and name what replaced them, from a file
/// as from the environment, each one reported.
#[test]
fn removed_keys_are_named_with_their_replacement() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("datalayer.yaml");
    std::fs::write(&file, "redis:\n  pool_size: 16\n  pipelining: lanes\n").unwrap();
    let output = run(
        &["--config", file.to_str().unwrap()],
        &[("DATALAYER__REDIS__WAIT_TIMEOUT", "1s")],
    );
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let text = stderr(&output);
    assert!(text.contains("(3 problems)"), "{text}");
    assert!(
        text.contains("`redis.pool_size`: was removed") && text.contains("`redis.connections`"),
        "{text}"
    );
    assert!(text.contains("`redis.pipelining`: was removed"), "{text}");
    assert!(
        text.contains("`redis.wait_timeout`: was removed")
            && text.contains("redis.connect_timeout"),
        "{text}"
    );
}

#[test]
fn a_config_file_is_validated_too() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("datalayer.toml");
    std::fs::write(&file, "[server]\nadress = \"127.0.0.1:0\"\n").unwrap();
    let output = run(&["--config", file.to_str().unwrap()], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("adress"), "{}", stderr(&output));

    let missing = run(&["--config", "/nonexistent/datalayer.toml"], &[]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("/nonexistent/datalayer.toml"));
}

#[test]
fn redis_passwords_never_print() {
    let output = run(
        &[],
        &[("DATALAYER__REDIS__URL", "http://:hunter2@localhost:6379")],
    );
    assert_eq!(output.status.code(), Some(2));
    let err = stderr(&output);
    assert!(err.contains("redis.url"), "{err}");
    assert!(!err.contains("hunter2"), "password leaked: {err}");
}

/// A running binary, its stderr lines streamed to a channel.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = datalayer(args, env)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("binary starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (bounded) for a log line containing `needle`, or finds it
    /// among the lines already read.
    fn wait_for(&mut self, needle: &str) -> String {
        if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!("no line with {needle:?}; saw {:#?}", self.seen),
            }
        }
    }

    /// The port from the "serving" line of JSON logs.
    fn port(&mut self) -> u16 {
        let line = self.wait_for("datalayer serving gRPC");
        let addr = line
            .split("\"addr\":\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("no addr in {line}"));
        addr.rsplit(':').next().unwrap().parse().unwrap()
    }

    fn terminate(mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn file_then_env_layering_and_sigterm_exit() {
    layering_and_sigterm(&[]).await;
}

/// `server.worker_threads = 1` is a current-thread runtime: it serves,
/// and exits cleanly on SIGTERM, as the default one does.
#[tokio::test]
async fn a_single_threaded_runtime_serves_and_exits_cleanly() {
    layering_and_sigterm(&[("DATALAYER__SERVER__WORKER_THREADS", "1")]).await;
}

async fn layering_and_sigterm(extra_env: &[(&str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("datalayer.yaml");
    std::fs::write(
        &file,
        "server:\n  addr: 127.0.0.1:0\ntelemetry:\n  log_format: json\nratelimit:\n  policies:\n    auth:\n      algorithm: sliding_window\n      limit: 5\n      window: 1m\n",
    )
    .unwrap();
    let mut env = vec![
        ("DATALAYER_CONFIG", file.to_str().unwrap()),
        // The environment wins over the file.
        ("DATALAYER__RATELIMIT__POLICIES__AUTH__LIMIT", "2"),
    ];
    env.extend_from_slice(extra_env);
    let mut app = Running::start(&[], &env);
    let warning = app.wait_for("in-process memory store");
    assert!(warning.contains("per process"), "{warning}");
    let port = app.port();

    let mut client = RateLimitServiceClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .expect("connects");
    let answer = client
        .check(CheckRequest {
            reserve: false,
            key: "u".into(),
            limit_source: Some(LimitSource::Policy("auth".into())),
            cost: None,
        })
        .await
        .expect("check")
        .into_inner();
    assert_eq!(answer.limit, 2, "env overrides the file's limit of 5");
    // The client stays connected: shutdown must not wait on idle
    // connections. Wait off the runtime so the client can see the GOAWAY.
    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || app.terminate())
        .await
        .unwrap();
    assert!(status.success(), "SIGTERM exits cleanly: {status:?}");
    println!("exited {:?} after SIGTERM", started.elapsed());
    drop(client);
}

#[tokio::test]
async fn logs_show_the_redis_url_without_its_password() {
    let mut app = Running::start(
        &[],
        &[
            ("DATALAYER__SERVER__ADDR", "127.0.0.1:0"),
            // Nothing listens on port 1: the service starts anyway, unhealthy.
            ("DATALAYER__REDIS__URL", "redis://:hunter2@127.0.0.1:1/0"),
            ("DATALAYER__TELEMETRY__LOG_FORMAT", "json"),
        ],
    );
    let line = app.wait_for("using Redis");
    assert!(line.contains("***"), "{line}");
    app.port();
    app.wait_for("NOT_SERVING");
    assert!(
        app.seen.iter().all(|l| !l.contains("hunter2")),
        "password leaked: {:#?}",
        app.seen
    );
    let status = app.terminate();
    assert!(status.success(), "{status:?}");
}

/// Every URL form redis-rs takes prints without its secret: the password,
/// a user part standing alone, and `pass` / `password` query parameters.
#[test]
fn no_url_form_prints_its_password() {
    for url in [
        "redis+unix:///tmp/nope.sock?pass=SECRET",
        "unix:///tmp/nope.sock?pass=SECRET",
        "redis://SECRET@127.0.0.1:1",
        "redis://user:SECRET@127.0.0.1:1/0",
        "redis+unix:///tmp/nope.sock?db=1&password=SECRET",
    ] {
        let mut app = Running::start(
            &[],
            &[
                ("DATALAYER__SERVER__ADDR", "127.0.0.1:0"),
                ("DATALAYER__REDIS__URL", url),
                ("DATALAYER__TELEMETRY__LOG_FORMAT", "json"),
            ],
        );
        let line = app.wait_for("using Redis");
        assert!(line.contains("***"), "{url}: {line}");
        app.wait_for("NOT_SERVING");
        assert!(
            app.seen.iter().all(|l| !l.contains("SECRET")),
            "{url}: leaked in {:#?}",
            app.seen
        );
    }
}

/// Health says why the store cannot serve, once per change: a wrong
/// password, an unknown database, a read-only replica.
#[test]
fn health_logs_why_the_store_cannot_serve() {
    let master = crate::harness::RedisServer::start_with(&["--requirepass", "right"]);
    let plain = crate::harness::RedisServer::start();
    let replica = crate::harness::RedisServer::start_with(&[
        "--replicaof",
        "127.0.0.1",
        &plain.port.to_string(),
    ]);
    for (url, reason) in [
        (
            format!("redis://:wrong@127.0.0.1:{}", master.port),
            "authentication",
        ),
        (
            format!("redis://127.0.0.1:{}/99", plain.port),
            "unknown_database",
        ),
        (replica.url(), "read_only"),
        ("redis://127.0.0.1:1".to_owned(), "unreachable"),
    ] {
        let mut app = Running::start(
            &[],
            &[
                ("DATALAYER__SERVER__ADDR", "127.0.0.1:0"),
                ("DATALAYER__REDIS__URL", &url),
                ("DATALAYER__TELEMETRY__LOG_FORMAT", "json"),
            ],
        );
        let line = app.wait_for("health NOT_SERVING");
        assert!(
            line.contains(&format!("\"reason\":\"{reason}\"")),
            "{url}: {line}"
        );
        // Once per change, not once per probe.
        std::thread::sleep(Duration::from_millis(1500));
        while let Ok(line) = app.lines.try_recv() {
            app.seen.push(line);
        }
        let repeats = app
            .seen
            .iter()
            .filter(|l| l.contains("NOT_SERVING"))
            .count();
        assert_eq!(repeats, 1, "{url}: {:#?}", app.seen);
    }
}

/// A maxmemory policy that evicts is named at start-up, with its risk.
#[test]
fn an_evicting_redis_is_warned_about() {
    let redis = crate::harness::RedisServer::start_with(&["--maxmemory-policy", "allkeys-lru"]);
    let mut app = Running::start(
        &[],
        &[
            ("DATALAYER__SERVER__ADDR", "127.0.0.1:0"),
            ("DATALAYER__REDIS__URL", &redis.url()),
            ("DATALAYER__TELEMETRY__LOG_FORMAT", "json"),
        ],
    );
    let line = app.wait_for("maxmemory-policy");
    assert!(
        line.contains("allkeys-lru") && line.contains("noeviction"),
        "{line}"
    );
}

/// The soft open-file limit is raised to the hard one at start-up.
#[test]
fn the_open_file_limit_is_raised() {
    let script = format!("ulimit -S -n 256 && exec {BIN}",);
    let mut child = Command::new("sh")
        .args(["-c", &script])
        .env("DATALAYER__SERVER__ADDR", "127.0.0.1:0")
        .env("DATALAYER__METRICS__ADDR", "127.0.0.1:0")
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("starts");
    let limits = format!("/proc/{}/limits", child.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    let (soft, hard) = loop {
        let text = std::fs::read_to_string(&limits).unwrap_or_default();
        let line = text
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap_or("")
            .to_owned();
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() >= 5 && fields[3] != "256" {
            break (fields[3].to_owned(), fields[4].to_owned());
        }
        assert!(Instant::now() < deadline, "the limit stayed at 256: {line}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(soft, hard);
    let _ = child.kill();
    let _ = child.wait();
}

/// An OTLP protocol the build does not speak (`http/json`) stops start-up
/// naming the variable (it is never ignored).
#[test]
fn otlp_protocols_other_than_grpc_or_http_protobuf_are_refused() {
    let out = run(&["--version"], &[]);
    assert!(out.status.success());
    let mut child = datalayer(
        &[],
        &[
            ("DATALAYER__SERVER__ADDR", "127.0.0.1:0"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ],
    )
    .stderr(std::process::Stdio::piped())
    .spawn()
    .expect("binary runs");
    let status = child.wait().expect("it exits");
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(
        err.contains("OTEL_EXPORTER_OTLP_PROTOCOL=http/json"),
        "{err}"
    );
}
