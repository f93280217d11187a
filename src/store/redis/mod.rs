//! The Redis store: deadpool-redis for connections, Lua for atomicity.
//!
//! Calls go through a few [`lane`]s that pipeline the commands of many
//! concurrent calls into one round trip, which is how the service wins back
//! the cost of gRPC. The pool opens the lanes' connections (with connect
//! timeouts) and serves operations that need a connection of their own.

mod cache;
mod cluster;
mod lane;
mod ratelimit;
mod session;

pub use ratelimit::script_source;

use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use deadpool_redis::{
    Manager, Pool, Runtime,
    redis::{self, AsyncConnectionConfig, RedisError, RedisResult, Value},
};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::{StoreError, StoreHealth};
use crate::config::RedisSettings;
use crate::keys::KeyBuilder;

/// A Lua script with its name (for spans and logs) and source (to reload
/// it after a NOSCRIPT, e.g. when Redis restarted empty).
pub(crate) struct NamedScript {
    pub name: &'static str,
    pub source: &'static str,
    pub script: redis::Script,
}

/// One script call of a batch.
pub(crate) struct ScriptCall<'a> {
    pub script: &'a NamedScript,
    pub cmd: redis::Cmd,
}

impl ScriptCall<'_> {
    /// The same call as `EVAL <source> ...`, for a server without the script.
    fn as_eval(&self) -> redis::Cmd {
        let mut eval = redis::cmd("EVAL");
        eval.arg(self.script.source);
        for arg in self.cmd.args_iter().skip(2) {
            if let redis::Arg::Simple(bytes) = arg {
                eval.arg(bytes);
            }
        }
        eval
    }
}

impl NamedScript {
    /// `EVALSHA <sha> <keys> <args>`.
    pub fn call<'a>(&'a self, keys: &[&str], args: &[u64]) -> ScriptCall<'a> {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.script.get_hash()).arg(keys.len());
        for key in keys {
            cmd.arg(*key);
        }
        for arg in args {
            cmd.arg(*arg);
        }
        ScriptCall { script: self, cmd }
    }
}

/// Builds a [`NamedScript`] from `lua/<name>.lua` with the shared prelude,
/// plus a service's own prelude when given (`lua_script!("cache_get",
/// "cache_prelude")`). Paths are relative to the calling file.
macro_rules! lua_script {
    ($name:literal $(, $service_prelude:literal)?) => {
        $crate::store::redis::NamedScript {
            name: $name,
            source: concat!(
                include_str!("lua/prelude.lua"),
                $(include_str!(concat!("lua/", $service_prelude, ".lua")),)?
                include_str!(concat!("lua/", $name, ".lua"))
            ),
            script: ::deadpool_redis::redis::Script::new(concat!(
                include_str!("lua/prelude.lua"),
                $(include_str!(concat!("lua/", $service_prelude, ".lua")),)?
                include_str!(concat!("lua/", $name, ".lua"))
            )),
        }
    };
}
pub(crate) use lua_script;

pub struct RedisStore {
    transport: Transport,
    redacted_url: String,
    keys: KeyBuilder,
}

/// How commands reach Redis.
enum Transport {
    /// One server: lanes pipeline every call onto a few pooled connections.
    Lanes {
        pool: Pool,
        lanes: Vec<mpsc::Sender<lane::Job>>,
        next: AtomicUsize,
    },
    /// A cluster: one pipeline per hash slot touched.
    Cluster(Box<cluster::ClusterTransport>),
}

impl StoreError {
    fn from_redis(e: &RedisError) -> Self {
        use redis::ErrorKind;
        use redis::ServerErrorKind as S;
        match e.kind() {
            ErrorKind::Parse | ErrorKind::UnexpectedReturnType => {
                StoreError::Internal(format!("unexpected reply from Redis: {e}"))
            }
            // A script error, WRONGTYPE, CROSSSLOT or an ACL refusal happens
            // again on retry: a bug or misconfiguration, not an outage.
            // (Other ERRs, e.g. "max number of clients", can pass.)
            ErrorKind::Server(S::ResponseError) if e.to_string().contains("script") => {
                StoreError::Internal(format!("redis refused: {e}"))
            }
            ErrorKind::Server(S::CrossSlot | S::NoPerm) => {
                StoreError::Internal(format!("redis refused: {e}"))
            }
            ErrorKind::Extension if e.code() == Some("WRONGTYPE") => {
                StoreError::Internal(format!("redis refused: {e}"))
            }
            _ => StoreError::Unavailable(format!("redis: {e}")),
        }
    }
}

impl RedisStore {
    /// Builds the pool and starts the lanes (so it needs a Tokio runtime).
    /// Connects lazily: the service starts even while Redis
    /// is down, and health reports NOT_SERVING until it answers.
    pub fn new(
        url: &str,
        redacted_url: String,
        s: &RedisSettings,
        keys: KeyBuilder,
        tls: Option<redis::TlsCertificates>,
    ) -> Result<Self, StoreError> {
        let connection_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(s.connect_timeout))
            .set_response_timeout(Some(s.response_timeout));
        let bad_url = |e: RedisError| StoreError::Unavailable(format!("redis.url: {e}"));
        let manager = match tls {
            None => Manager::new_with_config(url, connection_config),
            // The connection info then carries the CA to trust.
            Some(certs) => redis::Client::build_with_tls(url, certs).and_then(|client| {
                Manager::new_with_config(client.get_connection_info().clone(), connection_config)
            }),
        }
        .map_err(bad_url)?;
        let pool = Pool::builder(manager)
            .max_size(s.pool_size)
            .wait_timeout(Some(s.wait_timeout))
            .create_timeout(Some(s.connect_timeout))
            .recycle_timeout(Some(s.connect_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Internal(format!("building the Redis pool: {e}")))?;
        Ok(Self {
            transport: Transport::Lanes {
                lanes: (0..s.connections)
                    .map(|_| lane::spawn(pool.clone()))
                    .collect(),
                pool,
                next: AtomicUsize::new(0),
            },
            redacted_url,
            keys,
        })
    }

    /// A store on a Redis Cluster reached through `seeds`; connects lazily.
    pub fn cluster(
        seeds: &[&str],
        redacted_url: String,
        s: &RedisSettings,
        keys: KeyBuilder,
        tls: Option<redis::TlsCertificates>,
    ) -> Result<Self, StoreError> {
        Ok(Self {
            transport: Transport::Cluster(Box::new(cluster::ClusterTransport::new(seeds, s, tls)?)),
            redacted_url,
            keys,
        })
    }

    pub fn redacted_url(&self) -> &str {
        &self.redacted_url
    }

    /// Runs `cmds` in the next pipeline of a lane inside a CLIENT span
    /// named after `operation`; one reply per command, in order.
    pub(crate) async fn exec(
        &self,
        operation: &str,
        cmds: Vec<redis::Cmd>,
    ) -> Result<Vec<RedisResult<Value>>, StoreError> {
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

    /// As [`RedisStore::exec`] without a span: the health probe pings every
    /// second, and a trace per ping would drown the real ones.
    async fn exec_untraced(
        &self,
        cmds: Vec<redis::Cmd>,
    ) -> Result<Vec<RedisResult<Value>>, StoreError> {
        let (lanes, next) = match &self.transport {
            Transport::Lanes { lanes, next, .. } => (lanes, next),
            Transport::Cluster(cluster) => return cluster.exec(cmds).await,
        };
        let index = next.fetch_add(1, Ordering::Relaxed) % lanes.len();
        let (reply, answer) = oneshot::channel();
        lanes[index]
            .try_send(lane::Job { cmds, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => StoreError::Unavailable(format!(
                    "overloaded: {} calls already queued for Redis",
                    lane::QUEUE_DEPTH
                )),
                mpsc::error::TrySendError::Closed(_) => {
                    StoreError::Unavailable("the Redis lane stopped".to_owned())
                }
            })?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the Redis lane stopped".to_owned()))?
    }
}

impl RedisStore {
    /// Runs script calls pipelined in one round trip, answered in order.
    ///
    /// A call that meets NOSCRIPT (Redis restarted, or SCRIPT FLUSH) did not
    /// run, so only those calls are sent again after loading their scripts:
    /// no call is ever applied twice.
    pub(crate) async fn eval_batch(
        &self,
        calls: &[ScriptCall<'_>],
    ) -> Result<Vec<redis::Value>, StoreError> {
        let operation = match calls {
            [one] => format!("EVALSHA {}", one.script.name),
            _ => "PIPELINE EVALSHA".to_owned(),
        };
        let replies = self
            .exec(&operation, calls.iter().map(|c| c.cmd.clone()).collect())
            .await?;
        let mut values = Vec::with_capacity(calls.len());
        let mut missing = Vec::new();
        for (index, reply) in replies.into_iter().enumerate() {
            match reply {
                Ok(value) => values.push(Some(value)),
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    missing.push(index);
                    values.push(None);
                }
                Err(e) => return Err(StoreError::from_redis(&e)),
            }
        }
        if !missing.is_empty() {
            // EVAL runs the source and caches it on the node that needed
            // it, which on a cluster a keyless SCRIPT LOAD could not target.
            let retry: Vec<redis::Cmd> = missing.iter().map(|&i| calls[i].as_eval()).collect();
            let again = self.exec("EVAL (after NOSCRIPT)", retry).await?;
            for (reply, &index) in again.into_iter().zip(&missing) {
                values[index] = Some(reply.map_err(|e| StoreError::from_redis(&e))?);
            }
        }
        values
            .into_iter()
            .map(|v| v.ok_or_else(|| StoreError::Internal("missing script reply".to_owned())))
            .collect()
    }
}

#[async_trait]
impl StoreHealth for RedisStore {
    fn pool_status(&self) -> Option<super::PoolStatus> {
        let Transport::Lanes { pool, .. } = &self.transport else {
            return None;
        };
        let status = pool.status();
        Some(super::PoolStatus {
            size: status.size,
            in_use: status.size.saturating_sub(status.available),
            waiting: status.waiting,
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut replies = self.exec_untraced(vec![redis::cmd("PING")]).await?;
        match replies.pop() {
            Some(Ok(Value::SimpleString(pong))) if pong == "PONG" => Ok(()),
            other => Err(StoreError::Unavailable(format!("PING answered {other:?}"))),
        }
    }
}
