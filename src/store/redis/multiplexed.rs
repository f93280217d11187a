//! How calls share connections to one server: redis-rs's own multiplexed
//! connections, `redis.connections` of them, each of which writes the
//! requests of concurrent calls back to back on one socket and matches the
//! replies in order. (It replaced a pipeliner of our own, "lanes", which
//! cost 15–38% more per `Check`: one more task, channel and wake-up between
//! a call and the socket; docs/benchmark.md, 2026-12-03.)
//!
//! Calls in flight are bounded ([`MAX_IN_FLIGHT`]): past it a call is
//! refused at once as overloaded rather than queued behind the others.
//!
//! A multiplexed connection does not reconnect by itself: one that breaks
//! is dropped, and the next call on its slot opens a new one (within
//! `redis.connect_timeout`), so the store heals when Redis returns.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use deadpool_redis::redis::{
    self, AsyncConnectionConfig, Cmd, RedisError, RedisResult, Value, aio::MultiplexedConnection,
};

use crate::metrics as metrics_names;
use crate::store::memory::lock;
use crate::store::{PoolStatus, StoreError};

/// Replies of one call, in order, or why its commands could not run.
pub(super) type JobResult = Result<Vec<RedisResult<Value>>, StoreError>;

/// Calls waiting for Redis at once, beyond which new ones are refused as
/// overloaded (UNAVAILABLE, with a retry delay) instead of adding to the
/// wait of all the others.
pub(super) const MAX_IN_FLIGHT: usize = 8192;

fn breaks_connection(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
}

/// Counts a failed call; answers whether its connection is broken
/// (logged: the caller drops it and the next call opens a new one).
pub(super) fn failed(e: &RedisError) -> bool {
    let kind = super::classify(e).0;
    metrics::counter!(metrics_names::REDIS_ERRORS, "kind" => kind.as_str()).increment(1);
    let broken = breaks_connection(e);
    if broken {
        tracing::warn!(error = %e, "redis connection lost; reconnecting");
    }
    broken
}

/// Counts a call in flight while it lives (a call may be dropped midway:
/// its deadline passed, its caller left).
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Slot {
    /// The open connection and the number it was opened as: a call whose
    /// connection broke drops it only if no other call has replaced it.
    connection: Mutex<Option<(u64, MultiplexedConnection)>>,
    opened: AtomicU64,
    /// Held while a connection is opened, so calls that find the slot
    /// empty open one connection, not one each.
    connecting: tokio::sync::Mutex<()>,
    /// When the last attempt to open one failed, and why: calls that
    /// queued behind that attempt share its answer rather than each
    /// trying again in turn (thousands of calls × `connect_timeout`).
    last_failure: Mutex<Option<(Instant, StoreError)>>,
}

pub(super) struct Multiplexed {
    client: redis::Client,
    config: AsyncConnectionConfig,
    connect_timeout: Duration,
    slots: Vec<Slot>,
    next: AtomicUsize,
    in_flight: AtomicUsize,
    /// Calls waiting for a connection to open.
    waiting: AtomicUsize,
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
                    last_failure: Mutex::new(None),
                })
                .collect(),
            next: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
        }
    }

    /// For the pool metrics: the connections open (each is shared by every
    /// call, so all count as in use) and the calls waiting for one to open.
    pub fn status(&self) -> PoolStatus {
        let open = self
            .slots
            .iter()
            .filter(|s| lock(&s.connection).is_some())
            .count();
        PoolStatus {
            size: open,
            in_use: open,
            waiting: self.waiting.load(Ordering::Relaxed),
        }
    }

    async fn connection(&self, slot: &Slot) -> Result<(u64, MultiplexedConnection), StoreError> {
        if let Some(c) = lock(&slot.connection).as_ref() {
            return Ok(c.clone());
        }
        // Timed as a pool wait is: the time a call waited for a connection.
        let started = Instant::now();
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let waiting = InFlight(&self.waiting);
        let opened = self.open_connection(slot, started).await;
        drop(waiting);
        metrics::histogram!(metrics_names::REDIS_POOL_WAIT).record(started.elapsed().as_secs_f64());
        opened
    }

    async fn open_connection(
        &self,
        slot: &Slot,
        queued: Instant,
    ) -> Result<(u64, MultiplexedConnection), StoreError> {
        let _connecting = slot.connecting.lock().await;
        if let Some(c) = lock(&slot.connection).as_ref() {
            return Ok(c.clone());
        }
        if let Some((at, e)) = lock(&slot.last_failure).as_ref()
            && *at >= queued
        {
            return Err(e.clone());
        }
        let opened = self.dial().await;
        let opened = match opened {
            Ok(opened) => opened,
            Err(e) => {
                *lock(&slot.last_failure) = Some((Instant::now(), e.clone()));
                return Err(e);
            }
        };
        let opened = (slot.opened.fetch_add(1, Ordering::Relaxed), opened);
        *lock(&slot.connection) = Some(opened.clone());
        Ok(opened)
    }

    async fn dial(&self) -> Result<MultiplexedConnection, StoreError> {
        tokio::time::timeout(
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
        })
    }

    /// Runs `cmds` as one pipeline on the next connection; one reply per
    /// command, in order.
    pub async fn exec(&self, cmds: Vec<Cmd>) -> JobResult {
        if self.in_flight.fetch_add(1, Ordering::Relaxed) >= MAX_IN_FLIGHT {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            metrics::counter!(metrics_names::REDIS_ERRORS, "kind" => "overloaded").increment(1);
            return Err(StoreError::unavailable(format!(
                "overloaded: {MAX_IN_FLIGHT} calls already waiting for Redis"
            )));
        }
        let _in_flight = InFlight(&self.in_flight);
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
