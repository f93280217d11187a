//! Leaderboards on Redis. A board's keys carry its id as hash tag, so a
//! board and all its periods share one slot:
//!
//! * `…:lb:{id}:d` the definition (a hash: JSON, revision, generation),
//!   `:r` its revision counter, `:<gen>:p` the periods index (by start);
//! * `…:lbr:{id}:<gen>:<start>:z|h|n` (a board that never resets: durable)
//!   or `…:lbp:…` (a resetting board: expiring after its retention): the
//!   period's order (a sorted set of order keys, all at score 0, so
//!   `ZRANK` and `ZRANGEBYLEX` read the exact ranking), its records (owner
//!   → packed record) and its write counter;
//! * `…:lbi:{id}:<gen>:<hash of owner and key>` idempotent replies;
//! * `…:lbx:{boards}` the tenant's board ids (for listing and the cap).
//!
//! The store caches definitions: every script checks the revision it was
//! given and answers `stale` when the definition changed, so a cached one is
//! never acted on after a change.

mod replies;
mod scripts;
mod submit;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use deadpool_redis::redis::{self, Value};

use super::INDEX_SPACE;
use super::model::{Definition, Submission, prefix_len};
use super::store::{Created, Limits, Page, PeriodInfo, Store, Submitted, Which};
use crate::keys::{self, Tenant};
use crate::store::StoreError;
use crate::store::memory::lock;
use crate::store::redis::{NamedScript, Redis};
use replies::{Reply, definition, internal, page, ranked_or_none};
use scripts::{
    ATTEMPTS, PeriodKeys, SCRIPTS, board_key, now_ms, period_prefix, periods_key, sort_arg,
    start_of,
};

pub struct RedisBoards {
    redis: Arc<Redis>,
    defs: Mutex<HashMap<(Tenant, String), Definition>>,
}

impl RedisBoards {
    pub fn new(redis: Arc<Redis>) -> Arc<Self> {
        Arc::new(Self {
            redis,
            defs: Mutex::new(HashMap::new()),
        })
    }

    async fn exec(&self, what: &'static str, cmd: redis::Cmd) -> Result<Value, StoreError> {
        self.redis
            .exec(what, vec![cmd])
            .await?
            .pop()
            .ok_or_else(|| internal(what, "no reply"))?
            .map_err(|e| StoreError::from_redis(&e))
    }

    /// The definition, from the cache unless `fresh`.
    async fn def(
        &self,
        tenant: &Tenant,
        id: &str,
        fresh: bool,
    ) -> Result<Option<Definition>, StoreError> {
        let cache_key = (tenant.clone(), id.to_owned());
        if !fresh && let Some(def) = lock(&self.defs).get(&cache_key) {
            return Ok(Some(def.clone()));
        }
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(board_key(tenant, id, "d"))
            .arg("j")
            .arg("r")
            .arg("g");
        let def = definition(self.exec("HMGET leaderboard", cmd).await?)?;
        let mut cache = lock(&self.defs);
        match &def {
            Some(def) => cache.insert(cache_key, def.clone()),
            None => cache.remove(&cache_key),
        };
        Ok(def)
    }

    /// Runs a period script built by `call` until it answers for the
    /// definition it was given; `None` when the board does not exist.
    async fn on_period<T>(
        &self,
        tenant: &Tenant,
        board: &str,
        which: Which,
        script: &NamedScript,
        args: impl Fn(&mut redis::Cmd, &Definition),
        parse: impl Fn(Vec<Value>, &Definition, u64) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        for attempt in 0..ATTEMPTS {
            let Some(def) = self.def(tenant, board, attempt > 0).await? else {
                return Ok(None);
            };
            let start = start_of(&def, which);
            let k = PeriodKeys::of(tenant, &def, start);
            let d = board_key(tenant, board, "d");
            let mut call = script.call(&[&d, &k.z, &k.h], &[def.revision]);
            args(&mut call.cmd, &def);
            match Reply::of(self.redis.eval(call).await?, script.name)? {
                Reply::Ok(items) => return parse(items, &def, start).map(Some),
                Reply::Gone | Reply::Stale => continue,
                Reply::Other(what, _) => return Err(internal(script.name, what)),
            }
        }
        Err(internal(script.name, "the definition kept changing"))
    }
}

#[async_trait]
impl Store for RedisBoards {
    async fn create(
        &self,
        tenant: &Tenant,
        mut def: Definition,
        limits: Limits,
    ) -> Result<Created, StoreError> {
        let index = keys::key(tenant, INDEX_SPACE, "boards", &[]);
        let mut count = redis::cmd("ZCARD");
        count.arg(&index);
        let boards = replies::int(&self.exec("ZCARD leaderboard", count).await?, "count")?;
        if boards as usize >= limits.max_boards {
            return Ok(Created::Full);
        }
        let json = serde_json::to_string(&def).map_err(|e| internal("create", e))?;
        let (d, r) = (
            board_key(tenant, &def.id, "d"),
            board_key(tenant, &def.id, "r"),
        );
        let mut call = SCRIPTS.create.call(&[&d, &r], &[]);
        call.cmd.arg(json);
        let reply = replies::items(self.redis.eval(call).await?, "create")?;
        let Some(generation) = reply.get(1) else {
            return Ok(Created::Exists);
        };
        def.generation = replies::int(generation, "generation")? as u64;
        def.revision = def.generation;
        let mut add = redis::cmd("ZADD");
        add.arg(&index).arg(0).arg(&def.id);
        self.exec("ZADD leaderboard", add).await?;
        Ok(Created::Created(def))
    }

    async fn update(
        &self,
        tenant: &Tenant,
        mut def: Definition,
    ) -> Result<Option<Definition>, StoreError> {
        let Some(old) = self.def(tenant, &def.id, true).await? else {
            return Ok(None);
        };
        def.generation = old.generation;
        def.created_ms = old.created_ms;
        let json = serde_json::to_string(&def).map_err(|e| internal("update", e))?;
        let (d, r) = (
            board_key(tenant, &def.id, "d"),
            board_key(tenant, &def.id, "r"),
        );
        let mut call = SCRIPTS.update.call(&[&d, &r], &[]);
        call.cmd.arg(json).arg(def.generation);
        let reply = replies::items(self.redis.eval(call).await?, "update")?;
        let Some(revision) = reply.get(1) else {
            return Ok(None);
        };
        def.revision = replies::int(revision, "revision")? as u64;
        lock(&self.defs).insert((tenant.clone(), def.id.clone()), def.clone());
        Ok(Some(def))
    }

    async fn get(&self, tenant: &Tenant, id: &str) -> Result<Option<Definition>, StoreError> {
        self.def(tenant, id, true).await
    }

    async fn delete(&self, tenant: &Tenant, id: &str) -> Result<bool, StoreError> {
        for _ in 0..ATTEMPTS {
            let Some(def) = self.def(tenant, id, true).await? else {
                return Ok(false);
            };
            let (d, p) = (board_key(tenant, id, "d"), periods_key(tenant, &def));
            let mut call = SCRIPTS.delete.call(&[&d, &p], &[def.generation]);
            call.cmd.arg(period_prefix(tenant, &def));
            if replies::int(&self.redis.eval(call).await?, "delete")? == 1 {
                lock(&self.defs).remove(&(tenant.clone(), id.to_owned()));
                let mut rem = redis::cmd("ZREM");
                rem.arg(keys::key(tenant, INDEX_SPACE, "boards", &[]))
                    .arg(id);
                self.exec("ZREM leaderboard", rem).await?;
                return Ok(true);
            }
        }
        Err(internal("delete", "the definition kept changing"))
    }

    async fn list(
        &self,
        tenant: &Tenant,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Definition>, StoreError> {
        let mut range = redis::cmd("ZRANGEBYLEX");
        range
            .arg(keys::key(tenant, INDEX_SPACE, "boards", &[]))
            .arg(after.map_or("-".to_owned(), |a| format!("({a}")))
            .arg("+")
            .arg("LIMIT")
            .arg(0)
            .arg(limit + 1);
        let ids: Vec<String> =
            replies::strings(self.exec("ZRANGEBYLEX leaderboard", range).await?)?;
        // An id whose create or delete stopped half-way has no definition.
        let mut found = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(def) = self.def(tenant, &id, true).await? {
                found.push(def);
            }
        }
        Ok(found)
    }

    async fn submit(
        &self,
        tenant: &Tenant,
        board: &str,
        sub: &Submission,
        limits: Limits,
    ) -> Result<Submitted, StoreError> {
        self.submit_to(tenant, board, sub, limits).await
    }

    async fn top(
        &self,
        tenant: &Tenant,
        board: &str,
        which: Which,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Option<Page>, StoreError> {
        self.on_period(
            tenant,
            board,
            which,
            &SCRIPTS.top,
            |cmd, def| {
                cmd.arg(after.unwrap_or(""))
                    .arg(limit)
                    .arg(prefix_len(def.tie_break));
            },
            |items, def, start| page(items, def, start, Some(limit)),
        )
        .await
    }

    async fn around(
        &self,
        tenant: &Tenant,
        board: &str,
        which: Which,
        owner: &str,
        above: usize,
        below: usize,
    ) -> Result<Option<Page>, StoreError> {
        self.on_period(
            tenant,
            board,
            which,
            &SCRIPTS.around,
            |cmd, def| {
                cmd.arg(owner)
                    .arg(above)
                    .arg(below)
                    .arg(sort_arg(def))
                    .arg(def.tie_break.as_str())
                    .arg(prefix_len(def.tie_break));
            },
            |items, def, start| page(items, def, start, None),
        )
        .await
    }

    async fn records(
        &self,
        tenant: &Tenant,
        board: &str,
        which: Which,
        owners: &[String],
    ) -> Result<Option<(Vec<Option<super::model::Ranked>>, u64, String)>, StoreError> {
        self.on_period(
            tenant,
            board,
            which,
            &SCRIPTS.records,
            |cmd, def| {
                cmd.arg(sort_arg(def)).arg(def.tie_break.as_str());
                for owner in owners {
                    cmd.arg(owner);
                }
            },
            |items, _, start| {
                let mut items = items.into_iter();
                let count = replies::int(&items.next().unwrap_or(Value::Nil), "owners")? as u64;
                let rest: Vec<Value> = items.collect();
                let found = owners
                    .iter()
                    .zip(rest.chunks(2))
                    .map(|(owner, pair)| ranked_or_none(owner, pair))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((found, count, start.to_string()))
            },
        )
        .await
    }

    async fn delete_record(
        &self,
        tenant: &Tenant,
        board: &str,
        which: Which,
        owner: &str,
    ) -> Result<Option<bool>, StoreError> {
        self.on_period(
            tenant,
            board,
            which,
            &SCRIPTS.delete_record,
            |cmd, def| {
                cmd.arg(owner)
                    .arg(sort_arg(def))
                    .arg(def.tie_break.as_str());
            },
            |items, _, _| Ok(replies::int(items.first().unwrap_or(&Value::Nil), "deleted")? == 1),
        )
        .await
    }

    async fn periods(
        &self,
        tenant: &Tenant,
        board: &str,
    ) -> Result<Option<Vec<PeriodInfo>>, StoreError> {
        let Some(def) = self.def(tenant, board, true).await? else {
            return Ok(None);
        };
        let mut range = redis::cmd("ZRANGE");
        range
            .arg(periods_key(tenant, &def))
            .arg(0)
            .arg(-1)
            .arg("REV");
        let starts: Vec<String> = replies::strings(self.exec("ZRANGE leaderboard", range).await?)?;
        let current = def.period_at(now_ms());
        let mut spans = vec![current];
        spans.extend(
            starts
                .iter()
                .filter_map(|s| s.parse::<u64>().ok())
                .filter(|&s| s != current.start_ms)
                .map(|s| def.period_at(s)),
        );
        let cmds = spans
            .iter()
            .map(|span| {
                let mut len = redis::cmd("HLEN");
                len.arg(PeriodKeys::of(tenant, &def, span.start_ms).h);
                len
            })
            .collect();
        let counts = self.redis.exec("HLEN leaderboard", cmds).await?;
        let mut found = Vec::with_capacity(spans.len());
        for (i, (span, count)) in spans.into_iter().zip(counts).enumerate() {
            let owners = replies::int(&count.map_err(|e| StoreError::from_redis(&e))?, "owners")?;
            // A past period without records has expired.
            if i == 0 || owners > 0 {
                found.push(PeriodInfo {
                    span,
                    owners: owners as u64,
                });
            }
        }
        found.truncate(def.keep_periods as usize + 1);
        Ok(Some(found))
    }
}
