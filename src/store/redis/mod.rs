//! The Redis backend every service's Redis store is built on: one
//! connection layer (deadpool-redis) and the script machinery ([`script`]).
//!
//! On one server, calls share a few of redis-rs's [`multiplexed`]
//! connections, which write the commands of concurrent calls back to back
//! (one round trip carries many calls: how the service wins back the cost
//! of gRPC). On a cluster, [`cluster`] sends one pipeline per hash slot.
//! Services never see which.

mod cluster;
mod multiplexed;
mod probe;
pub mod script;
pub mod settings;

use std::sync::atomic::{AtomicBool, Ordering};

use deadpool_redis::redis::{
    self, AsyncConnectionConfig, ClientTlsConfig, RedisError, RedisResult, TlsCertificates, Value,
};
use tracing::Instrument;

pub use script::{NamedScript, ScriptCall};
pub use settings::{RedisMode, RedisSettings, RedisUrl};

use super::{PoolStatus, StoreError, StoreErrorKind};

pub struct Redis {
    transport: Transport,
    redacted_url: String,
    /// Whether scripts go with their Redis 7 shebang (the probe clears it
    /// on Redis 6).
    script_flags: AtomicBool,
    /// Where the health probe writes (`keys::probe_key`).
    probe_key: String,
    /// What the probe last learnt of the server, to log changes once.
    observed: probe::Observed,
    /// For pub/sub connections of their own (standalone Redis only).
    pubsub: Option<redis::Client>,
}

/// How commands reach Redis.
enum Transport {
    /// One server, on redis-rs's multiplexed connections.
    Multiplexed(Box<multiplexed::Multiplexed>),
    /// A cluster: one pipeline per hash slot touched.
    Cluster(Box<cluster::ClusterTransport>),
}

/// Classifies a Redis error by what the caller should be told, with a
/// short phrase saying what happened (health logs it as the reason).
pub fn classify(e: &RedisError) -> (StoreErrorKind, &'static str) {
    use redis::ErrorKind;
    use redis::ServerErrorKind as S;
    let code = e.code().unwrap_or_default();
    let text = e.to_string();
    match e.kind() {
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => (
            StoreErrorKind::Internal,
            "redis answered something unexpected",
        ),
        _ if code == "OOM" || text.contains("OOM command not allowed") => {
            (StoreErrorKind::Full, "redis is out of memory (maxmemory)")
        }
        ErrorKind::Server(S::ReadOnly) => (
            StoreErrorKind::Misconfigured,
            "redis is a read-only replica",
        ),
        _ if code == "READONLY" => (
            StoreErrorKind::Misconfigured,
            "redis is a read-only replica",
        ),
        _ if matches!(code, "NOAUTH" | "WRONGPASS")
            || matches!(e.kind(), ErrorKind::AuthenticationFailed) =>
        {
            (
                StoreErrorKind::Misconfigured,
                "redis refused our credentials",
            )
        }
        _ if code == "NOPERM" || matches!(e.kind(), ErrorKind::Server(S::NoPerm)) => (
            StoreErrorKind::Misconfigured,
            "redis refused a command (ACL)",
        ),
        _ if text.contains("DB index is out of range") => {
            (StoreErrorKind::Misconfigured, "redis has no such database")
        }
        ErrorKind::InvalidClientConfig => {
            (StoreErrorKind::Misconfigured, "redis.url is not usable")
        }
        // A script error, WRONGTYPE or CROSSSLOT happens again on retry: a
        // bug, not an outage. (Other ERRs, e.g. "max number of clients",
        // can pass.)
        ErrorKind::Server(S::ResponseError) if text.contains("script") => {
            (StoreErrorKind::Internal, "redis refused a script")
        }
        ErrorKind::Server(S::CrossSlot) => (StoreErrorKind::Internal, "redis refused (CROSSSLOT)"),
        _ if code == "WRONGTYPE" => (StoreErrorKind::Internal, "redis refused (WRONGTYPE)"),
        _ => (
            StoreErrorKind::Unavailable,
            "redis is unreachable or failing",
        ),
    }
}

impl StoreError {
    /// A Redis error as the store's error, keeping it as the cause.
    pub fn from_redis(e: &RedisError) -> Self {
        let (kind, what) = classify(e);
        let error = StoreError::new(kind, format!("{what}: {e}")).caused_by(e.clone());
        // A connection that failed after the command went out, or a
        // timeout: Redis may have run it. A refused connection ran nothing.
        let lost_mid_call = (e.is_io_error() || e.is_timeout() || e.is_connection_dropped())
            && !e.is_connection_refusal();
        if kind == StoreErrorKind::Unavailable && lost_mid_call {
            error.maybe_applied()
        } else {
            error
        }
    }
}

impl Redis {
    /// Builds the transport (so it needs a Tokio runtime). Connects lazily: the service starts even while Redis is down, and
    /// health reports NOT_SERVING until it answers.
    pub fn connect(s: &RedisSettings) -> Result<Self, StoreError> {
        let Some(url) = &s.url else {
            return Err(StoreError::new(
                StoreErrorKind::Misconfigured,
                "redis.url is not set",
            ));
        };
        let tls = tls_certificates(s)?;
        let pubsub = match (s.mode, &tls) {
            (RedisMode::Cluster, _) => None,
            (RedisMode::Standalone, None) => redis::Client::open(url.expose()).ok(),
            (RedisMode::Standalone, Some(certs)) => {
                redis::Client::build_with_tls(url.expose(), certs.clone()).ok()
            }
        };
        let transport = match s.mode {
            RedisMode::Standalone => Self::multiplexed(url.expose(), s, tls)?,
            RedisMode::Cluster => Transport::Cluster(Box::new(cluster::ClusterTransport::new(
                &url.seeds(),
                s,
                tls,
            )?)),
        };
        let instance = crate::random::hex(8)
            .map_err(|e| StoreError::internal(format!("no randomness: {e}")))?;
        Ok(Self {
            transport,
            redacted_url: url.redacted(),
            script_flags: AtomicBool::new(true),
            probe_key: crate::keys::probe_key(&instance),
            observed: probe::Observed::default(),
            pubsub,
        })
    }

    fn multiplexed(
        url: &str,
        s: &RedisSettings,
        tls: Option<TlsCertificates>,
    ) -> Result<Transport, StoreError> {
        let client = match tls {
            None => redis::Client::open(url),
            Some(certs) => redis::Client::build_with_tls(url, certs),
        }
        .map_err(|e| {
            StoreError::new(StoreErrorKind::Misconfigured, format!("redis.url: {e}")).caused_by(e)
        })?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(s.connect_timeout))
            .set_response_timeout(Some(s.response_timeout));
        Ok(Transport::Multiplexed(Box::new(
            multiplexed::Multiplexed::new(client, config, s.connections, s.connect_timeout),
        )))
    }

    pub fn redacted_url(&self) -> &str {
        &self.redacted_url
    }

    /// A client for pub/sub connections, where pub/sub is used (standalone
    /// Redis; on a cluster, services converge by polling).
    pub fn pubsub_client(&self) -> Option<&redis::Client> {
        self.pubsub.as_ref()
    }

    /// Whether scripts are sent with their shebang (Redis 7 and later).
    pub fn script_flags(&self) -> bool {
        self.script_flags.load(Ordering::Relaxed)
    }

    /// Runs `cmds` in the next pipeline inside a CLIENT span named after
    /// `operation`; one reply per command, in order.
    pub async fn exec(
        &self,
        operation: &'static str,
        cmds: Vec<redis::Cmd>,
    ) -> Result<Vec<RedisResult<Value>>, StoreError> {
        if !crate::telemetry::traces_exported() {
            return self.exec_untraced(cmds).await;
        }
        let span = tracing::info_span!(
            "redis",
            otel.name = operation,
            otel.kind = "client",
            db.system = "redis",
            db.operation = operation,
            db.redis.commands = cmds.len(),
        );
        self.exec_untraced(cmds).instrument(span).await
    }

    /// As [`Redis::exec`] without a span: the health probe runs every
    /// second, and a trace per probe would drown the real ones.
    pub async fn exec_untraced(
        &self,
        cmds: Vec<redis::Cmd>,
    ) -> Result<Vec<RedisResult<Value>>, StoreError> {
        match &self.transport {
            Transport::Multiplexed(m) => m.exec(cmds).await,
            Transport::Cluster(cluster) => cluster.exec(cmds).await,
        }
    }

    /// A Redis Cluster (else one server).
    pub fn is_cluster(&self) -> bool {
        matches!(self.transport, Transport::Cluster(_))
    }

    /// Whether one script may touch all of `keys`: always on one server; on
    /// a cluster, when they hash to one slot.
    pub fn same_node(&self, keys: &[String]) -> bool {
        match &self.transport {
            Transport::Multiplexed(_) => true,
            Transport::Cluster(_) => {
                let mut slots = keys.iter().map(|k| cluster::slot(k.as_bytes()));
                let first = slots.next();
                slots.all(|s| Some(s) == first)
            }
        }
    }

    /// The connections of one server, for the pool metrics (a cluster's
    /// connections are redis-rs's own: none).
    pub fn pool_status(&self) -> Option<PoolStatus> {
        match &self.transport {
            Transport::Multiplexed(m) => Some(m.status()),
            Transport::Cluster(_) => None,
        }
    }
}

/// The certificates of `rediss://`: a private CA (`redis.tls_ca_file`)
/// and a client certificate (`redis.tls_cert_file` + `tls_key_file`).
fn tls_certificates(s: &RedisSettings) -> Result<Option<TlsCertificates>, StoreError> {
    let read = |path: &std::path::PathBuf, key: &str| {
        std::fs::read(path).map_err(|e| {
            StoreError::new(
                StoreErrorKind::Misconfigured,
                format!("redis.{key}: cannot read {}", path.display()),
            )
            .caused_by(e)
        })
    };
    let root_cert = s
        .tls_ca_file
        .as_ref()
        .map(|p| read(p, "tls_ca_file"))
        .transpose()?;
    let client_tls = match (&s.tls_cert_file, &s.tls_key_file) {
        (Some(cert), Some(key)) => Some(ClientTlsConfig {
            client_cert: read(cert, "tls_cert_file")?,
            client_key: read(key, "tls_key_file")?,
        }),
        _ => None,
    };
    Ok(
        (root_cert.is_some() || client_tls.is_some()).then_some(TlsCertificates {
            client_tls,
            root_cert,
        }),
    )
}
