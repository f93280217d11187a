//! Typed settings, layered: built-in defaults < optional file < environment.
//!
//! The file comes from `--config FILE` or `DATALAYER_CONFIG` (TOML, YAML or
//! JSON by extension). Environment variables use `DATALAYER__` and `__`
//! between levels: `DATALAYER__REDIS__URL`, `DATALAYER__SERVER__ADDR`,
//! `DATALAYER__RATELIMIT__POLICIES__AUTH__LIMIT`.
//!
//! [`Settings::validate`] runs at start-up and names the offending key, so an
//! operator sees `redis.pool_size: must be at least 1`, not a panic.

use std::{collections::BTreeMap, fmt, net::SocketAddr, path::Path, time::Duration};

use config::{Config, Environment, File};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::ratelimit::{self, Limit, PolicyLimitSpec};

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub redis: RedisSettings,
    pub keys: KeySettings,
    pub health: HealthSettings,
    pub telemetry: TelemetrySettings,
    pub ratelimit: RateLimitSettings,
    pub cache: CacheSettings,
    pub session: SessionSettings,
    pub metrics: MetricsSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Address the gRPC server binds. Port 0 picks a free port.
    pub addr: SocketAddr,
    /// Deadline for a call that carries no `grpc-timeout`.
    #[serde(with = "humantime_serde")]
    pub default_timeout: Duration,
    /// Upper bound on any call's deadline, whatever the caller asks for.
    #[serde(with = "humantime_serde")]
    pub max_timeout: Duration,
    /// On SIGTERM/SIGINT: how long in-flight calls may take to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Largest request message accepted, in bytes.
    pub max_request_bytes: usize,
    /// Largest response message sent, in bytes.
    pub max_response_bytes: usize,
    /// Async runtime threads; 0 means one per CPU core.
    pub worker_threads: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([0, 0, 0, 0], 50051)),
            default_timeout: Duration::from_secs(1),
            max_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
            max_request_bytes: 4 * 1024 * 1024,
            max_response_bytes: 4 * 1024 * 1024,
            worker_threads: 0,
        }
    }
}

/// A Redis URL that never prints its password.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct RedisUrl(SecretString);

impl RedisUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(SecretString::from(url.into()))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// The comma-separated URLs (one, unless it lists cluster seeds).
    pub fn seeds(&self) -> Vec<&str> {
        self.expose()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// The URL(s) with any password replaced by `***`, for logs and errors.
    pub fn redacted(&self) -> String {
        self.seeds()
            .into_iter()
            .map(|seed| match url::Url::parse(seed) {
                Ok(mut url) => {
                    if url.password().is_some() {
                        let _ = url.set_password(Some("***"));
                    }
                    url.to_string()
                }
                Err(_) => "<unparsable url>".to_owned(),
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum RedisMode {
    /// One Redis server (or a primary behind one address).
    #[default]
    Standalone,
    /// Redis Cluster; `redis.url` lists seed nodes, comma-separated.
    Cluster,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://[:password@]host:port[/db]` or `rediss://` for TLS. Unset: the
    /// in-process memory store serves instead. In cluster mode: seed nodes,
    /// comma-separated.
    pub url: Option<RedisUrl>,
    /// `standalone` or `cluster`.
    pub mode: RedisMode,
    /// PEM file of the CA that signed Redis's certificate, for `rediss://`
    /// behind a private CA. Unset: the public web roots are trusted.
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// Multiplexed connections shared by all calls. Each pipelines many
    /// concurrent commands, so a handful is plenty.
    pub connections: usize,
    /// Pool size for operations that need a connection to themselves.
    pub pool_size: usize,
    /// Time allowed to open a connection.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time a call may wait for a free pooled connection.
    #[serde(with = "humantime_serde")]
    pub wait_timeout: Duration,
    /// A connection whose reply takes longer than this is dropped and
    /// reopened (a call's own deadline answers the caller earlier).
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: None,
            mode: RedisMode::Standalone,
            tls_ca_file: None,
            connections: 2,
            pool_size: 16,
            connect_timeout: Duration::from_millis(500),
            wait_timeout: Duration::from_millis(500),
            response_timeout: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeySettings {
    /// Tenant namespace; every key starts with `dl:<namespace>:`.
    pub namespace: String,
}

impl Default for KeySettings {
    fn default() -> Self {
        Self {
            namespace: "default".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthSettings {
    /// How often the background probe pings the store.
    #[serde(with = "humantime_serde")]
    pub probe_interval: Duration,
    /// How long one probe may take before the store counts as down.
    #[serde(with = "humantime_serde")]
    pub probe_timeout: Duration,
}

impl Default for HealthSettings {
    fn default() -> Self {
        Self {
            probe_interval: Duration::from_millis(1000),
            probe_timeout: Duration::from_millis(500),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// `text` (human-readable) or `json`.
    pub log_format: LogFormat,
    /// An `EnvFilter` directive; `RUST_LOG` overrides it.
    pub log_level: String,
    /// OTLP/gRPC endpoint for traces, e.g. `http://otel-collector:4317`.
    /// Falls back to `OTEL_EXPORTER_OTLP_ENDPOINT`; unset: no traces exported.
    pub otlp_endpoint: Option<String>,
    /// `service.name` resource attribute of exported spans.
    pub service_name: String,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Text,
            log_level: "info".to_owned(),
            otlp_endpoint: None,
            service_name: "datalayer".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitSettings {
    /// Most checks one `CheckBatch` may carry.
    pub max_batch: usize,
    /// Named limits callers refer to by `policy`.
    pub policies: BTreeMap<String, PolicyLimitSpec>,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            max_batch: 100,
            policies: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSettings {
    /// Longest caller key, in bytes.
    pub max_key_bytes: usize,
    /// Largest value, in bytes.
    pub max_value_bytes: usize,
    /// Most tags on one entry.
    pub max_tags: usize,
    /// Most keys in one `GetMany`, entries in one `SetMany`, tags in one
    /// `InvalidateTags`.
    pub max_batch: usize,
    /// Longest `ttl` and longest `stale_ttl`.
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    /// TTL of a `Set` that gives none; unset: `ttl` is required.
    #[serde(with = "humantime_serde")]
    pub default_ttl: Option<Duration>,
    /// Lease lifetime when `GetOrLease` gives none.
    #[serde(with = "humantime_serde")]
    pub default_lease_ttl: Duration,
    /// Longest lease a caller may ask for.
    #[serde(with = "humantime_serde")]
    pub max_lease_ttl: Duration,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            max_key_bytes: 512,
            max_value_bytes: 1024 * 1024,
            max_tags: 16,
            max_batch: 100,
            max_ttl: Duration::from_secs(30 * 24 * 3600),
            default_ttl: None,
            default_lease_ttl: Duration::from_secs(10),
            max_lease_ttl: Duration::from_secs(60),
        }
    }
}

impl CacheSettings {
    pub fn bounds(&self) -> crate::cache::Bounds {
        crate::cache::Bounds {
            max_key_bytes: self.max_key_bytes,
            max_value_bytes: self.max_value_bytes,
            max_tags: self.max_tags,
            max_batch: self.max_batch,
            max_ttl: self.max_ttl,
            default_ttl: self.default_ttl,
            default_lease_ttl: self.default_lease_ttl,
            max_lease_ttl: self.max_lease_ttl,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=4096).contains(&self.max_key_bytes) {
            return Err(invalid("cache.max_key_bytes", "must be between 1 and 4096"));
        }
        if !(1..=64 * 1024 * 1024).contains(&self.max_value_bytes) {
            return Err(invalid(
                "cache.max_value_bytes",
                "must be between 1 and 67108864 (64 MiB)",
            ));
        }
        if self.max_tags > 256 {
            return Err(invalid("cache.max_tags", "must be at most 256"));
        }
        if !(1..=10_000).contains(&self.max_batch) {
            return Err(invalid("cache.max_batch", "must be between 1 and 10000"));
        }
        let year = Duration::from_secs(366 * 24 * 3600);
        if self.max_ttl < Duration::from_secs(1) || self.max_ttl > year {
            return Err(invalid("cache.max_ttl", "must be between 1s and 366 days"));
        }
        if let Some(ttl) = self.default_ttl
            && (ttl < Duration::from_millis(1) || ttl > self.max_ttl)
        {
            return Err(invalid(
                "cache.default_ttl",
                "must be between 1ms and cache.max_ttl",
            ));
        }
        // Leases must end well within the hour an invalidation is remembered.
        if self.max_lease_ttl < Duration::from_millis(1)
            || self.max_lease_ttl > Duration::from_secs(600)
        {
            return Err(invalid(
                "cache.max_lease_ttl",
                "must be between 1ms and 10m",
            ));
        }
        if self.default_lease_ttl < Duration::from_millis(1)
            || self.default_lease_ttl > self.max_lease_ttl
        {
            return Err(invalid(
                "cache.default_lease_ttl",
                "must be between 1ms and cache.max_lease_ttl",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSettings {
    /// Serve Prometheus metrics at all.
    pub enabled: bool,
    /// Address of the `/metrics` HTTP endpoint (its own port, not gRPC's).
    pub addr: SocketAddr,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            addr: SocketAddr::from(([0, 0, 0, 0], 9090)),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionSettings {
    /// Largest session data (keys and values together), in bytes.
    pub max_data_bytes: usize,
    /// Idle TTL of a session created without one.
    #[serde(with = "humantime_serde")]
    pub default_idle_ttl: Duration,
    /// Absolute TTL of a session created without one.
    #[serde(with = "humantime_serde")]
    pub default_absolute_ttl: Duration,
    /// Longest idle or absolute TTL a caller may ask for.
    #[serde(with = "humantime_serde")]
    pub max_absolute_ttl: Duration,
    /// Live sessions per user: the default and the upper bound of a
    /// request's `max_sessions_per_user`. Bounds each user's index.
    pub max_sessions_per_user: u32,
    /// Longest one-time token TTL.
    #[serde(with = "humantime_serde")]
    pub max_one_time_ttl: Duration,
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self {
            max_data_bytes: 64 * 1024,
            default_idle_ttl: Duration::from_secs(30 * 60),
            default_absolute_ttl: Duration::from_secs(24 * 3600),
            max_absolute_ttl: Duration::from_secs(90 * 24 * 3600),
            max_sessions_per_user: 100,
            max_one_time_ttl: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl SessionSettings {
    pub fn bounds(&self) -> crate::session::Bounds {
        crate::session::Bounds {
            max_data_bytes: self.max_data_bytes,
            default_idle_ttl: self.default_idle_ttl,
            default_absolute_ttl: self.default_absolute_ttl,
            max_absolute_ttl: self.max_absolute_ttl,
            max_sessions_per_user: self.max_sessions_per_user,
            max_one_time_ttl: self.max_one_time_ttl,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=1024 * 1024).contains(&self.max_data_bytes) {
            return Err(invalid(
                "session.max_data_bytes",
                "must be between 1 and 1048576 (1 MiB)",
            ));
        }
        let year = Duration::from_secs(366 * 24 * 3600);
        if self.max_absolute_ttl < Duration::from_secs(1) || self.max_absolute_ttl > year {
            return Err(invalid(
                "session.max_absolute_ttl",
                "must be between 1s and 366 days",
            ));
        }
        for (key, ttl) in [
            ("session.default_idle_ttl", self.default_idle_ttl),
            ("session.default_absolute_ttl", self.default_absolute_ttl),
        ] {
            if ttl < Duration::from_millis(1) || ttl > self.max_absolute_ttl {
                return Err(invalid(
                    key,
                    "must be between 1ms and session.max_absolute_ttl",
                ));
            }
        }
        if !(1..=10_000).contains(&self.max_sessions_per_user) {
            return Err(invalid(
                "session.max_sessions_per_user",
                "must be between 1 and 10000",
            ));
        }
        if self.max_one_time_ttl < Duration::from_secs(1) || self.max_one_time_ttl > year {
            return Err(invalid(
                "session.max_one_time_ttl",
                "must be between 1s and 366 days",
            ));
        }
        Ok(())
    }
}

/// A start-up error that names the configuration key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("could not load configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid configuration: `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

impl Settings {
    /// Loads defaults < `file` (if any) < `DATALAYER__*` environment, then
    /// validates.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut builder = Config::builder();
        if let Some(file) = file {
            builder = builder.add_source(File::from(file).required(true));
        }
        builder = builder.add_source(
            Environment::with_prefix("DATALAYER")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        );
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks every value a typo could break, naming the key at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        if s.default_timeout.is_zero() {
            return Err(invalid("server.default_timeout", "must be greater than 0"));
        }
        if s.max_timeout < s.default_timeout {
            return Err(invalid(
                "server.max_timeout",
                "must be at least server.default_timeout",
            ));
        }
        if s.max_request_bytes < 1024 {
            return Err(invalid("server.max_request_bytes", "must be at least 1024"));
        }
        if s.max_response_bytes < 1024 {
            return Err(invalid(
                "server.max_response_bytes",
                "must be at least 1024",
            ));
        }
        let r = &self.redis;
        if let Some(url) = &r.url {
            let seeds = url.seeds();
            if r.mode == RedisMode::Standalone && seeds.len() > 1 {
                return Err(invalid(
                    "redis.url",
                    "lists several servers; set redis.mode = \"cluster\" for a Redis Cluster",
                ));
            }
            for seed in seeds {
                let scheme_ok = url::Url::parse(seed)
                    .map(|u| matches!(u.scheme(), "redis" | "rediss" | "redis+unix" | "unix"))
                    .unwrap_or(false);
                if !scheme_ok {
                    return Err(invalid(
                        "redis.url",
                        format!(
                            "`{}` is not a redis:// or rediss:// URL",
                            RedisUrl::new(seed).redacted()
                        ),
                    ));
                }
            }
        }
        if r.tls_ca_file.is_some()
            && !r
                .url
                .as_ref()
                .is_some_and(|u| u.seeds().iter().all(|s| s.starts_with("rediss://")))
        {
            return Err(invalid(
                "redis.tls_ca_file",
                "needs redis.url with rediss:// (TLS) URLs",
            ));
        }
        if r.pool_size < r.connections {
            return Err(invalid(
                "redis.pool_size",
                "must be at least redis.connections (each holds a pooled connection)",
            ));
        }
        if r.connections == 0 {
            return Err(invalid("redis.connections", "must be at least 1"));
        }
        if r.pool_size == 0 {
            return Err(invalid("redis.pool_size", "must be at least 1"));
        }
        if r.connect_timeout.is_zero() {
            return Err(invalid("redis.connect_timeout", "must be greater than 0"));
        }
        if r.response_timeout.is_zero() {
            return Err(invalid("redis.response_timeout", "must be greater than 0"));
        }
        if r.wait_timeout.is_zero() {
            return Err(invalid("redis.wait_timeout", "must be greater than 0"));
        }
        let ns = &self.keys.namespace;
        if ns.is_empty()
            || ns.len() > 64
            || !ns
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid(
                "keys.namespace",
                "must be 1 to 64 characters of [A-Za-z0-9_-]",
            ));
        }
        if self.health.probe_interval.is_zero() {
            return Err(invalid("health.probe_interval", "must be greater than 0"));
        }
        if self.health.probe_timeout.is_zero() {
            return Err(invalid("health.probe_timeout", "must be greater than 0"));
        }
        if self.telemetry.log_level.trim().is_empty() {
            return Err(invalid("telemetry.log_level", "must not be empty"));
        }
        if self.ratelimit.max_batch == 0 || self.ratelimit.max_batch > 10_000 {
            return Err(invalid(
                "ratelimit.max_batch",
                "must be between 1 and 10000",
            ));
        }
        self.policies()?;
        self.cache.validate()?;
        self.session.validate()?;
        if self.metrics.enabled
            && self.metrics.addr.port() != 0
            && self.metrics.addr.port() == self.server.addr.port()
        {
            return Err(invalid(
                "metrics.addr",
                "must use another port than server.addr",
            ));
        }
        Ok(())
    }

    /// The configured policies, validated by the same rules as inline limits.
    pub fn policies(&self) -> Result<BTreeMap<String, Limit>, ConfigError> {
        self.ratelimit
            .policies
            .iter()
            .map(|(name, spec)| {
                let prefix = format!("ratelimit.policies.{name}");
                if !ratelimit::is_valid_policy_name(name) {
                    return Err(invalid(
                        prefix,
                        "policy names are 1 to 64 characters of [A-Za-z0-9_.-]",
                    ));
                }
                spec.to_limit()
                    .map(|limit| (name.clone(), limit))
                    .map_err(|v| invalid(format!("{prefix}.{}", v.field), v.description))
            })
            .collect()
    }
}
