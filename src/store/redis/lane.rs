//! Lanes: automatic pipelining of concurrent calls onto a few connections.
//!
//! Each lane is a task that owns one Redis connection. Calls queue commands
//! on a lane; the lane sends everything queued as *one* pipeline, waits for
//! the replies, hands each call its own, and repeats. While one pipeline is
//! in flight the next one fills up, so under load a single write and read
//! carry dozens of calls — Redis spends its time on scripts, not syscalls.
//! With one pipeline in flight per lane, latency is at most two round trips.
//!
//! A connection that fails is dropped and reopened (through the pool, with
//! its connect timeout) for the next batch: the store heals by itself when
//! Redis returns.

use deadpool_redis::{
    Connection, Pool,
    redis::{self, RedisError, RedisResult, Value},
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::metrics as metrics_names;
use crate::store::StoreError;

/// Replies of one job, in order, or why the batch could not run.
pub(super) type JobResult = Result<Vec<RedisResult<Value>>, StoreError>;

pub(super) struct Job {
    pub cmds: Vec<redis::Cmd>,
    pub reply: oneshot::Sender<JobResult>,
}

/// Most commands sent in one pipeline; more wait for the next one.
const MAX_BATCH_COMMANDS: usize = 512;

/// Calls queued per lane before new ones are refused as overload.
pub(super) const QUEUE_DEPTH: usize = 8192;

pub(super) fn spawn(pool: Pool) -> mpsc::Sender<Job> {
    let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
    tokio::spawn(run(pool, rx));
    tx
}

fn breaks_connection(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
}

/// Counts a failed pipeline; answers whether its connection is broken
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

/// A connection from the pool, timing the wait.
pub(super) async fn pooled(pool: &Pool) -> Result<Connection, StoreError> {
    let started = Instant::now();
    let result = pool.get().await;
    metrics::histogram!(metrics_names::REDIS_POOL_WAIT).record(started.elapsed().as_secs_f64());
    result.map_err(|e| {
        let e = match e {
            // Redis itself refused (a wrong password, an unknown database):
            // classified like any Redis error, so no retry is promised.
            deadpool_redis::PoolError::Backend(e) => StoreError::from_redis(&e),
            e => StoreError::unavailable(format!("redis connect: {e}")).caused_by(e),
        };
        metrics::counter!(metrics_names::REDIS_ERRORS, "kind" => e.kind.as_str()).increment(1);
        e
    })
}

/// Ends when every sender is gone (the store was dropped).
async fn run(pool: Pool, mut rx: mpsc::Receiver<Job>) {
    // Held, not taken, from the pool: the pool's size and in-use counts
    // (metrics) include the lanes' connections.
    let mut conn: Option<Connection> = None;
    let mut jobs: Vec<Job> = Vec::new();
    while let Some(first) = rx.recv().await {
        jobs.push(first);
        let mut commands = jobs[0].cmds.len();
        while commands < MAX_BATCH_COMMANDS {
            match rx.try_recv() {
                Ok(job) => {
                    commands += job.cmds.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        // A caller that gave up (deadline passed) must not have its
        // commands run after it was told they failed.
        jobs.retain(|job| !job.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }

        let connection = match conn.as_mut() {
            Some(c) => Ok(c),
            None => match pooled(&pool).await {
                Ok(c) => Ok(conn.insert(c)),
                Err(e) => Err(e),
            },
        };
        let connection = match connection {
            Ok(c) => c,
            Err(e) => {
                for job in jobs.drain(..) {
                    let _ = job.reply.send(Err(e.clone()));
                }
                continue;
            }
        };

        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let mut sizes = Vec::with_capacity(jobs.len());
        for job in &mut jobs {
            sizes.push(job.cmds.len());
            for cmd in job.cmds.drain(..) {
                pipe.add_command(cmd);
            }
        }
        let total: usize = sizes.iter().sum();
        metrics::histogram!(metrics_names::REDIS_PIPELINE_COMMANDS).record(total as f64);
        let started = Instant::now();
        let replies = pipe
            .query_async::<Vec<RedisResult<Value>>>(connection)
            .await;
        metrics::histogram!(metrics_names::REDIS_ROUNDTRIP).record(started.elapsed().as_secs_f64());
        match replies {
            Ok(replies) if replies.len() == sizes.iter().sum::<usize>() => {
                let mut replies = replies.into_iter();
                for (job, size) in jobs.drain(..).zip(sizes) {
                    let _ = job.reply.send(Ok(replies.by_ref().take(size).collect()));
                }
            }
            Ok(replies) => {
                let e = StoreError::internal(format!(
                    "pipeline of {} commands answered {}",
                    sizes.iter().sum::<usize>(),
                    replies.len()
                ));
                for job in jobs.drain(..) {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
            Err(e) => {
                if failed(&e) {
                    // Detached, so the pool never hands out a broken one.
                    drop(conn.take().map(Connection::take));
                }
                let e = StoreError::from_redis(&e);
                for job in jobs.drain(..) {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }
}
