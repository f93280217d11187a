//! Real `redis-server` processes: one shared server and one shared 3-master
//! cluster per test run (tests isolate themselves by namespace), and
//! servers of their own for tests that kill, freeze or fill Redis.
//!
//! A watchdog process kills each server when the test process exits, so
//! the shared ones (kept in statics, which are never dropped) never
//! outlive the run.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

/// A `redis-server` child process on a free port, killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    extra_args: Vec<String>,
    /// Its working directory: whatever it writes (a replication RDB,
    /// `nodes.conf`) lands here, never in the checkout.
    dir: tempfile::TempDir,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// Kills `pid` once this test process is gone.
fn watchdog(pid: u32) {
    let me = std::process::id();
    let script =
        format!("while kill -0 {me} 2>/dev/null; do sleep 0.5; done; kill -9 {pid} 2>/dev/null");
    let _ = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
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
            dir: tempfile::tempdir().expect("a temp dir"),
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
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra_args)
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        watchdog(child.id());
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

    /// Kills the process (like a crash) and waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
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
            // A server with a password answers, but only to be told it.
            .map(|reply| reply.starts_with("+PONG") || reply.starts_with("-NOAUTH"))
            .unwrap_or(false)
    }

    /// Sends one raw RESP command and returns the whole first reply.
    pub fn command(&self, resp: &str) -> std::io::Result<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.write_all(resp.as_bytes())?;
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            let n = stream.read(&mut buf)?;
            out.extend_from_slice(&buf[..n]);
            if n == 0 || complete(&out) {
                break;
            }
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// Runs a command given as words, in RESP.
    pub fn cmd(&self, words: &[&str]) -> String {
        let mut resp = format!("*{}\r\n", words.len());
        for w in words {
            resp.push_str(&format!("${}\r\n{}\r\n", w.len(), w));
        }
        self.command(&resp).expect("redis answers")
    }

    /// How many times `command` (lower case, e.g. `evalsha`) has run, from
    /// `INFO commandstats`.
    pub fn command_calls(&self, command: &str) -> i64 {
        let info = self.cmd(&["INFO", "commandstats"]);
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// The keys matching `pattern` (SCAN, so a shared server is fine).
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut cursor = "0".to_owned();
        loop {
            let reply = self.cmd(&["SCAN", &cursor, "MATCH", pattern, "COUNT", "1000"]);
            let lines: Vec<&str> = reply.split("\r\n").collect();
            // *2, $n, cursor, *m, then $len/key pairs.
            cursor = lines.get(2).copied().unwrap_or("0").to_owned();
            keys.extend(
                lines
                    .iter()
                    .skip(4)
                    .filter(|l| !l.is_empty() && !l.starts_with('$') && !l.starts_with('*'))
                    .map(|s| s.to_string()),
            );
            if cursor == "0" {
                return keys;
            }
        }
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

/// Whether a RESP reply is complete (enough for the replies tests read).
fn complete(buf: &[u8]) -> bool {
    fn parse(buf: &[u8], at: usize) -> Option<usize> {
        let end = buf[at..].windows(2).position(|w| w == b"\r\n")? + at;
        let line = std::str::from_utf8(&buf[at + 1..end]).ok()?;
        match buf.get(at)? {
            b'+' | b'-' | b':' => Some(end + 2),
            b'$' => {
                let n: i64 = line.parse().ok()?;
                if n < 0 {
                    Some(end + 2)
                } else {
                    let stop = end + 2 + n as usize + 2;
                    (buf.len() >= stop).then_some(stop)
                }
            }
            b'*' => {
                let n: i64 = line.parse().ok()?;
                let mut next = end + 2;
                for _ in 0..n.max(0) {
                    next = parse(buf, next)?;
                }
                Some(next)
            }
            _ => Some(buf.len()),
        }
    }
    !buf.is_empty() && parse(buf, 0).is_some()
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
        for node in self.nodes.iter().filter(|n| n.is_running()) {
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

    /// The index of the master serving `key`'s slot.
    pub fn index_for(&self, key: &str) -> usize {
        let slot = self.nodes[0].int(&["CLUSTER", "KEYSLOT", key]);
        self.nodes
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
            .expect("a node serves every slot")
    }

    /// The node serving `key`'s slot.
    pub fn node_for(&mut self, key: &str) -> &mut RedisServer {
        let index = self.index_for(key);
        &mut self.nodes[index]
    }

    /// Every key matching `pattern`, on every master.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        self.nodes.iter().flat_map(|n| n.keys(pattern)).collect()
    }
}

static SHARED_REDIS: OnceLock<RedisServer> = OnceLock::new();
static SHARED_CLUSTER: OnceLock<RedisCluster> = OnceLock::new();

/// The run's shared `redis-server`. Tests on it use their own namespace
/// and never kill, freeze, flush or fill it.
pub fn shared_redis() -> &'static RedisServer {
    SHARED_REDIS.get_or_init(RedisServer::start)
}

/// The run's shared 3-master cluster, under the same rules.
pub fn shared_cluster() -> &'static RedisCluster {
    SHARED_CLUSTER.get_or_init(RedisCluster::start)
}
