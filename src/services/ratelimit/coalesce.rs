//! Checks that arrive together go to Redis as one script call.
//!
//! On a single Redis server, each one-limit check is handed to one of a few
//! coalescing tasks. A task takes every check queued on it, sends them as
//! one call of `lua/many.lua` (each check decided and consumed alone, in
//! order, exactly as its own `EVALSHA` would), hands each caller its
//! decision, and repeats. While its call is in flight the next batch fills,
//! so under load Redis runs one script per batch instead of one per check:
//! the cost of a script call itself (reading the call, entering Lua, the
//! reply) is paid once per batch. With no load a check goes alone at once,
//! as its algorithm's own script; nothing waits for a batch to fill.
//!
//! Not on a cluster: a script sees the keys of one slot only, and checks of
//! different keys rarely share one, so there each check keeps its own
//! `EVALSHA` (pipelined by the cluster connection).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::{Algorithm, Decision};
use crate::store::StoreError;
use crate::store::redis::{NamedScript, Redis, ScriptCall};

/// The call of one check alone: its algorithm's own script.
pub(super) type One = fn(&str, &Args) -> ScriptCall<'static>;

/// Coalescing tasks: each has one script call in flight at a time, so a
/// few keep Redis busy while their next batches fill.
const TASKS: usize = 2;
/// Most checks in one script call.
const MAX_BATCH: usize = 128;
/// Checks queued per task before callers wait to queue.
const QUEUE_DEPTH: usize = 4096;

/// A check's six script arguments (see `lua/dispatch.lua`).
#[derive(Clone, Copy)]
pub(super) struct Args {
    pub algorithm: Algorithm,
    pub a: u64,
    pub b: u64,
    pub c: u64,
    pub cost: u64,
    pub shadow: bool,
}

impl Args {
    pub fn push(&self, cmd: &mut deadpool_redis::redis::Cmd) {
        let code = match self.algorithm {
            Algorithm::Gcra => "g",
            Algorithm::TokenBucket => "t",
            Algorithm::FixedWindow => "f",
            Algorithm::SlidingWindow => "s",
        };
        cmd.arg(code)
            .arg(self.a)
            .arg(self.b)
            .arg(self.c)
            .arg(self.cost)
            .arg(u8::from(self.shadow));
    }
}

struct Pending {
    key: String,
    args: Args,
    /// The caller's span when traces are exported: the script call's
    /// Redis span goes under the first caller of its batch (a lone check's
    /// under its own call, as without coalescing).
    span: Option<tracing::Span>,
    reply: oneshot::Sender<Result<Decision, StoreError>>,
}

pub(super) struct Coalescer {
    tasks: Vec<mpsc::Sender<Pending>>,
    next: AtomicUsize,
}

impl Coalescer {
    /// Starts the tasks; they end when the coalescer is dropped.
    pub fn start(
        redis: Arc<Redis>,
        one: One,
        many: &'static NamedScript,
        decode: fn(&[i64]) -> Decision,
    ) -> Self {
        let tasks = (0..TASKS)
            .map(|_| {
                let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
                tokio::spawn(run(redis.clone(), one, many, decode, rx));
                tx
            })
            .collect();
        Self {
            tasks,
            next: AtomicUsize::new(0),
        }
    }

    /// One check of `key`, decided with the checks queued beside it.
    pub async fn check(&self, key: String, args: Args) -> Result<Decision, StoreError> {
        let (reply, answer) = oneshot::channel();
        let task = &self.tasks[self.next.fetch_add(1, Ordering::Relaxed) % self.tasks.len()];
        let stopped = || StoreError::unavailable("the rate-limit check queue has stopped");
        let span = crate::telemetry::traces_exported().then(tracing::Span::current);
        task.send(Pending {
            key,
            args,
            span,
            reply,
        })
        .await
        .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn run(
    redis: Arc<Redis>,
    one: One,
    many: &'static NamedScript,
    decode: fn(&[i64]) -> Decision,
    mut rx: mpsc::Receiver<Pending>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // A caller that gave up (its deadline passed) was told the check
        // failed: it must not consume afterwards.
        batch.retain(|p: &Pending| !p.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let call = if let [alone] = batch.as_slice() {
            one(&alone.key, &alone.args)
        } else {
            let keys: Vec<&str> = batch.iter().map(|p| p.key.as_str()).collect();
            let mut call = many.call(&keys, &[]);
            for p in &batch {
                p.args.push(&mut call.cmd);
            }
            call
        };
        let span = batch[0].span.clone().unwrap_or_else(tracing::Span::none);
        let answered = redis.eval(call).instrument(span).await.and_then(|value| {
            let values: Vec<i64> =
                deadpool_redis::redis::FromRedisValue::from_redis_value(value)
                    .map_err(|e| StoreError::internal(format!("rate-limit checks reply: {e}")))?;
            if values.len() == batch.len() * 4 {
                Ok(values)
            } else {
                Err(StoreError::internal(format!(
                    "rate-limit checks reply: {} values for {} checks",
                    values.len(),
                    batch.len()
                )))
            }
        });
        match answered {
            Ok(values) => {
                for (p, d) in batch.drain(..).zip(values.chunks_exact(4)) {
                    let _ = p.reply.send(Ok(decode(d)));
                }
            }
            Err(e) => {
                for p in batch.drain(..) {
                    let _ = p.reply.send(Err(e.clone()));
                }
            }
        }
    }
}
