//! Lua scripts: how a service declares one, calls it, and gets it back
//! after Redis forgot it (a restart or `SCRIPT FLUSH`).
//!
//! A script is the shared [`PRELUDE`], then the service's own prelude (if
//! any), then its body, joined at start-up. Each body's header names its
//! KEYS and ARGV; the service's `redis.rs` has one function that builds
//! each script's arguments.
//!
//! On Redis 7 every script starts with a shebang that declares its flags:
//! `#!lua` for scripts that write, so Redis refuses them *before* they run
//! when it is out of memory (a script without flags is only checked at its
//! first write that needs memory, so a `DEL` first let whole writes
//! through), and `#!lua flags=no-writes` for reads, which keep working on a
//! full server or a replica. Redis 6 knows no shebang: the health probe
//! reads the version and [`Redis`] then sends the same scripts without it.

use deadpool_redis::redis::{self, Value};

use super::Redis;
use crate::store::StoreError;

/// Helpers every script starts with (`now_us`, `idiv`, `ttl_ms`, ...).
pub const PRELUDE: &str = include_str!("lua/prelude.lua");

/// One form of a script: its source and SHA1.
struct Variant {
    source: String,
    sha: String,
}

impl Variant {
    fn new(source: String) -> Self {
        let sha = redis::Script::new(&source).get_hash().to_owned();
        Self { source, sha }
    }
}

/// A Lua script with its name (for spans and logs) and source (to send it
/// again as `EVAL` after a NOSCRIPT), with and without its shebang.
pub struct NamedScript {
    pub name: &'static str,
    /// `EVALSHA <name>`, the span of a call of this script alone.
    span: &'static str,
    /// With the Redis 7 shebang that declares the script's flags.
    flagged: Variant,
    /// Without it, for Redis 6.
    plain: Variant,
}

impl NamedScript {
    /// A script that may write. `parts` follow the shared prelude, e.g.
    /// `&[SERVICE_PRELUDE, include_str!("lua/set.lua")]`. Built once per
    /// process (keep it in a `LazyLock`).
    pub fn new(name: &'static str, parts: &[&str]) -> Self {
        Self::with_shebang(name, "#!lua\n", parts)
    }

    /// A script that only reads: it runs on a full Redis or a replica.
    pub fn read_only(name: &'static str, parts: &[&str]) -> Self {
        Self::with_shebang(name, "#!lua flags=no-writes\n", parts)
    }

    fn with_shebang(name: &'static str, shebang: &str, parts: &[&str]) -> Self {
        let mut source = String::from(PRELUDE);
        for part in parts {
            source.push_str(part);
        }
        Self {
            name,
            span: Box::leak(format!("EVALSHA {name}").into_boxed_str()),
            flagged: Variant::new(format!("{shebang}{source}")),
            plain: Variant::new(source),
        }
    }

    fn variant(&self, flags: bool) -> &Variant {
        if flags { &self.flagged } else { &self.plain }
    }

    /// The source and SHA1 Redis 7 is sent (for benchmarks that run the
    /// script straight on Redis).
    pub fn source(&self) -> &str {
        &self.flagged.source
    }

    pub fn sha(&self) -> &str {
        &self.flagged.sha
    }

    /// A call with `keys` and numeric ARGV; add more ARGV with `.arg()` on
    /// its `cmd`.
    pub fn call<'a>(&'a self, keys: &[&str], argv: &[u64]) -> ScriptCall<'a> {
        let mut args = redis::Cmd::new();
        args.arg(keys.len());
        for key in keys {
            args.arg(*key);
        }
        for arg in argv {
            args.arg(*arg);
        }
        ScriptCall {
            script: self,
            cmd: args,
        }
    }
}

/// One script call of a batch: the script, then `numkeys keys... argv...`
/// (`.arg()` on `cmd` adds ARGV; the command name is added when it is sent,
/// as EVALSHA or EVAL of the form the server takes).
pub struct ScriptCall<'a> {
    pub script: &'a NamedScript,
    pub cmd: redis::Cmd,
}

impl ScriptCall<'_> {
    fn command(&self, name: &str, head: &str) -> redis::Cmd {
        let mut cmd = redis::cmd(name);
        cmd.arg(head);
        for arg in self.cmd.args_iter() {
            if let redis::Arg::Simple(bytes) = arg {
                cmd.arg(bytes);
            }
        }
        cmd
    }

    /// `EVALSHA <sha> ...` of the form this server takes.
    fn as_evalsha(&self, flags: bool) -> redis::Cmd {
        self.command("EVALSHA", &self.script.variant(flags).sha)
    }

    /// The same call as `EVAL <source> ...`, for a server without the script.
    fn as_eval(&self, flags: bool) -> redis::Cmd {
        self.command("EVAL", &self.script.variant(flags).source)
    }
}

/// Counts a script's refusal (out of memory, read-only, ...) by its kind.
fn counted(e: StoreError) -> StoreError {
    metrics::counter!(crate::metrics::REDIS_ERRORS, "kind" => e.kind.as_str()).increment(1);
    e
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
        let flags = self.script_flags();
        let replies = self
            .exec(
                operation,
                calls.iter().map(|c| c.as_evalsha(flags)).collect(),
            )
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
                Err(e) => return Err(counted(StoreError::from_redis(&e))),
            }
        }
        if !missing.is_empty() {
            let retry: Vec<redis::Cmd> = missing.iter().map(|&i| calls[i].as_eval(flags)).collect();
            let again = self.exec("EVAL (after NOSCRIPT)", retry).await?;
            for (reply, &index) in again.into_iter().zip(&missing) {
                values[index] = Some(reply.map_err(|e| counted(StoreError::from_redis(&e)))?);
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
