//! The Redis store: deadpool-redis for connections, Lua for atomicity.
//!
//! Hot paths share a few *lanes*: multiplexed connections that pipeline the
//! commands of many concurrent calls onto one socket, which is how the
//! service wins back the cost of gRPC (one Redis round trip carries many
//! calls). The pool creates lanes (with connect timeouts) and serves
//! operations that need a connection of their own; a lane that fails is
//! dropped and replaced on next use, so the store heals when Redis returns.

mod ratelimit;

use std::sync::{
    Mutex,
    atomic::{AtomicUsize, Ordering},
};

use async_trait::async_trait;
use deadpool_redis::{
    Connection, Manager, Pool, Runtime,
    redis::{self, AsyncConnectionConfig, RedisError, aio::MultiplexedConnection},
};
use tracing::Instrument;

use super::{StoreError, StoreHealth};
use crate::config::RedisSettings;

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

/// Builds a [`NamedScript`] from `lua/<name>.lua`, with the shared prelude.
macro_rules! lua_script {
    ($name:literal) => {
        $crate::store::redis::NamedScript {
            name: $name,
            source: concat!(
                include_str!("lua/prelude.lua"),
                include_str!(concat!("lua/", $name, ".lua"))
            ),
            script: ::deadpool_redis::redis::Script::new(concat!(
                include_str!("lua/prelude.lua"),
                include_str!(concat!("lua/", $name, ".lua"))
            )),
        }
    };
}
pub(crate) use lua_script;

pub struct RedisStore {
    pool: Pool,
    // std Mutex: held only to clone or swap an `Option`, never across await.
    lanes: Vec<Mutex<Option<MultiplexedConnection>>>,
    next_lane: AtomicUsize,
    redacted_url: String,
}

impl StoreError {
    /// Connection-level failures mean the lane must be replaced.
    fn from_redis(e: &RedisError) -> Self {
        use redis::ErrorKind;
        match e.kind() {
            ErrorKind::Parse | ErrorKind::UnexpectedReturnType => {
                StoreError::Internal(format!("unexpected reply from Redis: {e}"))
            }
            _ => StoreError::Unavailable(format!("redis: {e}")),
        }
    }
}

fn breaks_connection(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
}

impl RedisStore {
    /// Builds the pool. Connects lazily: the service starts even while Redis
    /// is down, and health reports NOT_SERVING until it answers.
    pub fn new(url: &str, redacted_url: String, s: &RedisSettings) -> Result<Self, StoreError> {
        let connection_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(s.connect_timeout))
            .set_response_timeout(Some(s.response_timeout));
        let manager = Manager::new_with_config(url, connection_config)
            .map_err(|e| StoreError::Unavailable(format!("redis.url: {e}")))?;
        let pool = Pool::builder(manager)
            .max_size(s.pool_size)
            .wait_timeout(Some(s.wait_timeout))
            .create_timeout(Some(s.connect_timeout))
            .recycle_timeout(Some(s.connect_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Internal(format!("building the Redis pool: {e}")))?;
        Ok(Self {
            pool,
            lanes: (0..s.connections).map(|_| Mutex::new(None)).collect(),
            next_lane: AtomicUsize::new(0),
            redacted_url,
        })
    }

    pub fn redacted_url(&self) -> &str {
        &self.redacted_url
    }

    /// A pooled connection for operations that must not share a socket.
    #[allow(dead_code)]
    pub(crate) async fn dedicated(&self) -> Result<Connection, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(format!("redis pool: {e}")))
    }

    /// A lane: a shared multiplexed connection, opened on first use.
    async fn lane(&self) -> Result<(usize, MultiplexedConnection), StoreError> {
        let index = self.next_lane.fetch_add(1, Ordering::Relaxed) % self.lanes.len();
        if let Some(conn) = self.lock_lane(index).clone() {
            return Ok((index, conn));
        }
        let pooled = self
            .pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(format!("redis connect: {e}")))?;
        // Taken out of the pool: the lane owns it from now on, and the pool
        // may open another for dedicated use.
        let conn = Connection::take(pooled);
        *self.lock_lane(index) = Some(conn.clone());
        Ok((index, conn))
    }

    fn lock_lane(&self, index: usize) -> std::sync::MutexGuard<'_, Option<MultiplexedConnection>> {
        self.lanes[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Maps a Redis error, dropping the lane if its connection is broken.
    fn fail(&self, lane: usize, e: RedisError) -> StoreError {
        if breaks_connection(&e) {
            tracing::warn!(error = %e, lane, "redis connection lost; will reconnect");
            *self.lock_lane(lane) = None;
        }
        StoreError::from_redis(&e)
    }

    /// Runs `pipe` on a lane inside a CLIENT span named after `operation`.
    pub(crate) async fn query<T: redis::FromRedisValue>(
        &self,
        operation: &str,
        pipe: &redis::Pipeline,
    ) -> Result<T, StoreError> {
        let span = tracing::info_span!(
            "redis",
            otel.name = operation,
            otel.kind = "client",
            db.system = "redis",
            db.operation = operation,
            db.redis.commands = pipe.len(),
        );
        self.query_untraced(pipe).instrument(span).await
    }

    /// As [`RedisStore::query`] without a span: the health probe pings every
    /// second, and a trace per ping would drown the real ones.
    async fn query_untraced<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, StoreError> {
        let (lane, mut conn) = self.lane().await?;
        pipe.query_async(&mut conn)
            .await
            .map_err(|e| self.fail(lane, e))
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
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for call in calls {
            pipe.add_command(call.cmd.clone());
        }
        let replies: Vec<redis::RedisResult<redis::Value>> = self.query(&operation, &pipe).await?;
        if replies.len() != calls.len() {
            return Err(StoreError::Internal(format!(
                "expected {} replies, got {}",
                calls.len(),
                replies.len()
            )));
        }
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
            let mut retry = redis::pipe();
            let mut loaded: Vec<&str> = Vec::new();
            for &index in &missing {
                let script = calls[index].script;
                if !loaded.contains(&script.name) {
                    loaded.push(script.name);
                    retry.cmd("SCRIPT").arg("LOAD").arg(script.source).ignore();
                }
            }
            for &index in &missing {
                retry.add_command(calls[index].cmd.clone());
            }
            let again: Vec<redis::Value> = self.query("SCRIPT LOAD + EVALSHA", &retry).await?;
            for (&index, value) in missing.iter().zip(again) {
                values[index] = Some(value);
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
    async fn ping(&self) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("PING");
        let (pong,): (String,) = self.query_untraced(&pipe).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(StoreError::Internal(format!("PING answered {pong:?}")))
        }
    }
}
