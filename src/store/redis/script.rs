//! Lua scripts: how a service declares one, calls it, and gets it back
//! after Redis forgot it (a restart or `SCRIPT FLUSH`).
//!
//! A script is the shared [`PRELUDE`], then the service's own prelude (if
//! any), then its body, joined at start-up. Each body's header names its
//! KEYS and ARGV; the service's `redis.rs` has one function that builds
//! each script's arguments.

use deadpool_redis::redis::{self, Value};

use super::Redis;
use crate::store::StoreError;

/// Helpers every script starts with (`now_us`, `idiv`, `ttl_ms`, ...).
pub const PRELUDE: &str = include_str!("lua/prelude.lua");

/// A Lua script with its name (for spans and logs) and source (to send it
/// again as `EVAL` after a NOSCRIPT).
pub struct NamedScript {
    pub name: &'static str,
    /// `EVALSHA <name>`, the span of a call of this script alone.
    span: &'static str,
    source: String,
    script: redis::Script,
}

impl NamedScript {
    /// `parts` after the shared prelude, e.g. `&[SERVICE_PRELUDE,
    /// include_str!("lua/get.lua")]`. Built once per process (keep it in a
    /// `LazyLock`).
    pub fn new(name: &'static str, parts: &[&str]) -> Self {
        let mut source = String::from(PRELUDE);
        for part in parts {
            source.push_str(part);
        }
        Self {
            name,
            span: Box::leak(format!("EVALSHA {name}").into_boxed_str()),
            script: redis::Script::new(&source),
            source,
        }
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn sha(&self) -> &str {
        self.script.get_hash()
    }

    /// `EVALSHA <sha> <keys> <args>`; add more ARGV with `.arg()` on `cmd`.
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

/// One script call of a batch.
pub struct ScriptCall<'a> {
    pub script: &'a NamedScript,
    pub cmd: redis::Cmd,
}

impl ScriptCall<'_> {
    /// The same call as `EVAL <source> ...`, for a server without the script.
    fn as_eval(&self) -> redis::Cmd {
        let mut eval = redis::cmd("EVAL");
        eval.arg(self.script.source.as_str());
        for arg in self.cmd.args_iter().skip(2) {
            if let redis::Arg::Simple(bytes) = arg {
                eval.arg(bytes);
            }
        }
        eval
    }
}

impl Redis {
    /// Runs script calls pipelined in one round trip, answered in order.
    ///
    /// A call that meets NOSCRIPT (Redis restarted, or SCRIPT FLUSH) did not
    /// run, so only those calls are sent again, as EVAL: no call is ever
    /// applied twice. (EVAL caches the script on the node that needed it,
    /// which on a cluster a keyless SCRIPT LOAD could not target.)
    pub async fn eval_batch(&self, calls: &[ScriptCall<'_>]) -> Result<Vec<Value>, StoreError> {
        let operation = match calls {
            [one] => one.script.span,
            _ => "PIPELINE EVALSHA",
        };
        let replies = self
            .exec(operation, calls.iter().map(|c| c.cmd.clone()).collect())
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
            let retry: Vec<redis::Cmd> = missing.iter().map(|&i| calls[i].as_eval()).collect();
            let again = self.exec("EVAL (after NOSCRIPT)", retry).await?;
            for (reply, &index) in again.into_iter().zip(&missing) {
                values[index] = Some(reply.map_err(|e| StoreError::from_redis(&e))?);
            }
        }
        values
            .into_iter()
            .map(|v| v.ok_or_else(|| StoreError::internal("missing script reply")))
            .collect()
    }

    /// One script call's reply.
    pub async fn eval(&self, call: ScriptCall<'_>) -> Result<Value, StoreError> {
        self.eval_batch(std::slice::from_ref(&call))
            .await?
            .pop()
            .ok_or_else(|| StoreError::internal("no script reply"))
    }
}
