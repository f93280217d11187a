//! The other way to share connections on one server
//! (`redis.pipelining = "multiplexed"`): redis-rs's own multiplexed
//! connections, `redis.connections` of them, each of which writes the
//! requests of concurrent calls back to back on one socket and matches the
//! replies in order. It is kept beside the [lanes](super::lane) so the two
//! can be measured against each other on the same binary
//! (`scripts/bench.sh`, docs/benchmark.md).
//!
//! A multiplexed connection does not reconnect by itself: one that breaks
//! is dropped, and the next call on its slot opens a new one (within
//! `redis.connect_timeout`), so the store heals when Redis returns.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use deadpool_redis::redis::{
    self, AsyncConnectionConfig, Cmd, RedisResult, Value, aio::MultiplexedConnection,
};

use super::lane::{JobResult, failed};
use crate::metrics as metrics_names;
use crate::store::StoreError;
use crate::store::memory::lock;

struct Slot {
    /// The open connection and the number it was opened as: a call whose
    /// connection broke drops it only if no other call has replaced it.
    connection: Mutex<Option<(u64, MultiplexedConnection)>>,
    opened: AtomicU64,
    /// Held while a connection is opened, so calls that find the slot
    /// empty open one connection, not one each.
    connecting: tokio::sync::Mutex<()>,
}

pub(super) struct Multiplexed {
    client: redis::Client,
    config: AsyncConnectionConfig,
    connect_timeout: Duration,
    slots: Vec<Slot>,
    next: AtomicUsize,
}

impl Multiplexed {
    /// Connects lazily, so the service starts while Redis is away.
    pub fn new(
        client: redis::Client,
        config: AsyncConnectionConfig,
        connections: usize,
        connect_timeout: Duration,
    ) -> Self {
        Self {
            client,
            config,
            connect_timeout,
            slots: (0..connections.max(1))
                .map(|_| Slot {
                    connection: Mutex::new(None),
                    opened: AtomicU64::new(0),
                    connecting: tokio::sync::Mutex::new(()),
                })
                .collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// Connections open now (for the pool metrics: each is shared by
    /// every call, so all count as in use).
    pub fn open(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| lock(&s.connection).is_some())
            .count()
    }

    async fn connection(&self, slot: &Slot) -> Result<(u64, MultiplexedConnection), StoreError> {
        if let Some(c) = lock(&slot.connection).as_ref() {
            return Ok(c.clone());
        }
        // Timed as a pool wait is: the time a call waited for a connection.
        let started = Instant::now();
        let opened = self.open_connection(slot).await;
        metrics::histogram!(metrics_names::REDIS_POOL_WAIT).record(started.elapsed().as_secs_f64());
        opened
    }

    async fn open_connection(
        &self,
        slot: &Slot,
    ) -> Result<(u64, MultiplexedConnection), StoreError> {
        let _connecting = slot.connecting.lock().await;
        if let Some(c) = lock(&slot.connection).as_ref() {
            return Ok(c.clone());
        }
        let opened = tokio::time::timeout(
            self.connect_timeout,
            self.client
                .get_multiplexed_async_connection_with_config(&self.config),
        )
        .await
        .map_err(|_| StoreError::unavailable("redis connect timed out"))?
        .map_err(|e| {
            let e = StoreError::from_redis(&e);
            metrics::counter!(metrics_names::REDIS_ERRORS, "kind" => e.kind.as_str()).increment(1);
            e
        })?;
        let opened = (slot.opened.fetch_add(1, Ordering::Relaxed), opened);
        *lock(&slot.connection) = Some(opened.clone());
        Ok(opened)
    }

    /// Runs `cmds` as one pipeline on the next connection; one reply per
    /// command, in order.
    pub async fn exec(&self, cmds: Vec<Cmd>) -> JobResult {
        let slot = &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        let (number, mut connection) = self.connection(slot).await?;
        let n = cmds.len();
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for cmd in cmds {
            pipe.add_command(cmd);
        }
        metrics::histogram!(metrics_names::REDIS_PIPELINE_COMMANDS).record(n as f64);
        let started = Instant::now();
        let replies = pipe
            .query_async::<Vec<RedisResult<Value>>>(&mut connection)
            .await;
        metrics::histogram!(metrics_names::REDIS_ROUNDTRIP).record(started.elapsed().as_secs_f64());
        match replies {
            Ok(replies) if replies.len() == n => Ok(replies),
            Ok(replies) => Err(StoreError::internal(format!(
                "pipeline of {n} commands answered {}",
                replies.len()
            ))),
            Err(e) => {
                if failed(&e) {
                    let mut held = lock(&slot.connection);
                    if held.as_ref().is_some_and(|(n, _)| *n == number) {
                        *held = None;
                    }
                }
                Err(StoreError::from_redis(&e))
            }
        }
    }
}
