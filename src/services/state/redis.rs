//! State on Redis. A collection's keys carry the collection as hash tag:
//! `…:st:{users}:d:<key>` (a document, a hash), `:idx` (its keys, a sorted
//! set ordered by key), `:exp` (the keys that expire, by when), `:seq` (the
//! write counter) and `:log` (the change stream): every document script
//! touches one slot. Counters are `…:sc:{users}:<key>`; a lock is
//! `…:lk:{name}` with its fencing counter at `…:lkf:{name}`.

use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use deadpool_redis::redis::{FromRedisValue, Value};

use super::store::{Store, WriteLimits};
use super::{
    Acquire, COUNTER_SPACE, Change, ChangeKind, Changes, DOC_SPACE, DeleteOutcome, Doc,
    FENCE_SPACE, Increment, KeyRange, LOCK_SPACE, PutOp, PutOutcome,
};
use crate::keys::{self, Tenant};
use crate::store::StoreError;
use crate::store::redis::{NamedScript, Redis};

struct Scripts {
    put: NamedScript,
    get: NamedScript,
    delete: NamedScript,
    list: NamedScript,
    count: NamedScript,
    changes: NamedScript,
    increment: NamedScript,
    counters: NamedScript,
    lock_acquire: NamedScript,
    lock_renew: NamedScript,
    lock_release: NamedScript,
}

/// The state helpers, before each document script's body.
const PRELUDE: &str = include_str!("lua/prelude.lua");

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    put: NamedScript::new("state.put", &[PRELUDE, include_str!("lua/put.lua")]),
    get: NamedScript::read_only("state.get", &[include_str!("lua/get.lua")]),
    delete: NamedScript::new("state.delete", &[PRELUDE, include_str!("lua/delete.lua")]),
    list: NamedScript::read_only("state.list", &[PRELUDE, include_str!("lua/list.lua")]),
    count: NamedScript::read_only("state.count", &[PRELUDE, include_str!("lua/count.lua")]),
    changes: NamedScript::read_only("state.changes", &[include_str!("lua/changes.lua")]),
    increment: NamedScript::new("state.increment", &[include_str!("lua/increment.lua")]),
    counters: NamedScript::read_only("state.counters", &[include_str!("lua/counters.lua")]),
    lock_acquire: NamedScript::new(
        "state.lock_acquire",
        &[include_str!("lua/lock_acquire.lua")],
    ),
    lock_renew: NamedScript::new("state.lock_renew", &[include_str!("lua/lock_renew.lua")]),
    lock_release: NamedScript::new(
        "state.lock_release",
        &[include_str!("lua/lock_release.lua")],
    ),
});

/// The keys of one collection.
struct CollectionKeys {
    index: String,
    exp: String,
    seq: String,
    log: String,
}

impl CollectionKeys {
    fn new(tenant: &Tenant, collection: &str) -> Self {
        let k = |part| keys::key(tenant, DOC_SPACE, collection, &[part]);
        Self {
            index: k("idx"),
            exp: k("exp"),
            seq: k("seq"),
            log: k("log"),
        }
    }
}

fn doc_key(tenant: &Tenant, collection: &str, key: &str) -> String {
    keys::key(tenant, DOC_SPACE, collection, &["d", key])
}

fn counter_key(tenant: &Tenant, collection: &str, key: &str) -> String {
    keys::key(tenant, COUNTER_SPACE, collection, &[key])
}

fn lock_keys(tenant: &Tenant, name: &str) -> (String, String) {
    (
        keys::key(tenant, LOCK_SPACE, name, &[]),
        keys::key(tenant, FENCE_SPACE, name, &[]),
    )
}

fn internal(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::internal(format!("state script reply ({what}): {e}"))
}

fn pair(what: &str, reply: Value) -> Result<(i64, i64), StoreError> {
    FromRedisValue::from_redis_value(reply).map_err(|e| internal(what, e))
}

fn text(v: &Value, what: &str) -> Result<String, StoreError> {
    String::from_redis_value(v.clone()).map_err(|e| internal(what, e))
}

pub struct RedisState {
    redis: Arc<Redis>,
}

impl RedisState {
    pub fn new(redis: Arc<Redis>) -> Self {
        Self { redis }
    }
}

#[async_trait]
impl Store for RedisState {
    async fn put(
        &self,
        tenant: &Tenant,
        collection: &str,
        op: &PutOp,
        limits: WriteLimits,
    ) -> Result<PutOutcome, StoreError> {
        let c = CollectionKeys::new(tenant, collection);
        let doc = doc_key(tenant, collection, &op.key);
        let mut call = SCRIPTS
            .put
            .call(&[&doc, &c.index, &c.exp, &c.seq, &c.log], &[]);
        call.cmd
            .arg(&op.key)
            .arg(op.value.as_slice())
            .arg(&op.content_type)
            .arg(op.expected_version.map_or(-1, |v| v as i64))
            .arg(op.ttl_ms)
            .arg(limits.max_log_entries)
            .arg(limits.max_docs)
            .arg(op.kind.as_str());
        let (status, n) = pair("put", self.redis.eval(call).await?)?;
        Ok(match status {
            1 => PutOutcome::Written { version: n as u64 },
            0 => PutOutcome::Conflict {
                current: n.max(0) as u64,
            },
            _ => PutOutcome::Full {
                count: n.max(0) as u64,
            },
        })
    }

    async fn get_many(
        &self,
        tenant: &Tenant,
        collection: &str,
        keys: &[String],
    ) -> Result<Vec<Option<Doc>>, StoreError> {
        let docs: Vec<String> = keys
            .iter()
            .map(|k| doc_key(tenant, collection, k))
            .collect();
        let refs: Vec<&str> = docs.iter().map(String::as_str).collect();
        let reply = self.redis.eval(SCRIPTS.get.call(&refs, &[])).await?;
        let items = Vec::<Vec<Value>>::from_redis_value(reply).map_err(|e| internal("get", e))?;
        items
            .into_iter()
            .map(|fields| match fields.as_slice() {
                [] => Ok(None),
                [value, content_type, version, ttl] => {
                    let ttl = i64::from_redis_value(ttl.clone()).map_err(|e| internal("ttl", e))?;
                    Ok(Some(Doc {
                        value: Vec::<u8>::from_redis_value(value.clone())
                            .map_err(|e| internal("value", e))?,
                        content_type: text(content_type, "content type")?,
                        version: text(version, "version")?
                            .parse()
                            .map_err(|e| internal("version", e))?,
                        ttl_ms: (ttl >= 0).then_some(ttl as u64),
                    }))
                }
                other => Err(internal("get", format!("{} fields", other.len()))),
            })
            .collect()
    }

    async fn delete(
        &self,
        tenant: &Tenant,
        collection: &str,
        key: &str,
        expected_version: Option<u64>,
        limits: WriteLimits,
    ) -> Result<DeleteOutcome, StoreError> {
        let c = CollectionKeys::new(tenant, collection);
        let doc = doc_key(tenant, collection, key);
        let mut call = SCRIPTS
            .delete
            .call(&[&doc, &c.index, &c.exp, &c.seq, &c.log], &[]);
        call.cmd
            .arg(key)
            .arg(expected_version.map_or(-1, |v| v as i64))
            .arg(limits.max_log_entries);
        let (status, n) = pair("delete", self.redis.eval(call).await?)?;
        Ok(match status {
            1 => DeleteOutcome::Deleted,
            _ => DeleteOutcome::NotDeleted {
                current: n.max(0) as u64,
            },
        })
    }

    async fn list(
        &self,
        tenant: &Tenant,
        collection: &str,
        range: &KeyRange,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let c = CollectionKeys::new(tenant, collection);
        let lower = match &range.after {
            Some(after) if after.as_str() >= range.prefix.as_str() => {
                [b"(", after.as_bytes()].concat()
            }
            _ if range.prefix.is_empty() => b"-".to_vec(),
            _ => [b"[", range.prefix.as_bytes()].concat(),
        };
        let upper = if range.prefix.is_empty() {
            b"+".to_vec()
        } else {
            // 0xFF never occurs in UTF-8: every key with the prefix sorts
            // before `prefix` + 0xFF.
            let mut upper = b"[".to_vec();
            upper.extend_from_slice(range.prefix.as_bytes());
            upper.push(0xFF);
            upper
        };
        let mut call = SCRIPTS.list.call(&[&c.index, &c.exp], &[]);
        call.cmd.arg(lower).arg(upper).arg(limit);
        let reply = self.redis.eval(call).await?;
        Vec::<String>::from_redis_value(reply).map_err(|e| internal("list", e))
    }

    async fn count(&self, tenant: &Tenant, collection: &str) -> Result<u64, StoreError> {
        let c = CollectionKeys::new(tenant, collection);
        let reply = self
            .redis
            .eval(SCRIPTS.count.call(&[&c.index, &c.exp], &[]))
            .await?;
        let n = i64::from_redis_value(reply).map_err(|e| internal("count", e))?;
        Ok(n.max(0) as u64)
    }

    async fn changes(
        &self,
        tenant: &Tenant,
        collection: &str,
        cursor: Option<&str>,
        max: usize,
    ) -> Result<Changes, StoreError> {
        let c = CollectionKeys::new(tenant, collection);
        let mut call = SCRIPTS.changes.call(&[&c.log, &c.seq], &[]);
        call.cmd.arg(cursor.unwrap_or("")).arg(max);
        let reply = self.redis.eval(call).await?;
        let mut items = Vec::<Value>::from_redis_value(reply).map_err(|e| internal("log", e))?;
        if items.len() < 2 {
            return Err(internal("log", "short reply"));
        }
        let rest = items.split_off(2);
        let cursor = text(&items[0], "cursor")?;
        let last_seq = i64::from_redis_value(items[1].clone()).map_err(|e| internal("seq", e))?;
        let changes = rest
            .into_iter()
            .map(|item| {
                let fields =
                    Vec::<String>::from_redis_value(item).map_err(|e| internal("change", e))?;
                let [_, key, kind, seq] = fields.as_slice() else {
                    return Err(internal("change", format!("{} fields", fields.len())));
                };
                Ok(Change {
                    key: key.clone(),
                    kind: ChangeKind::parse(kind).ok_or_else(|| internal("change type", kind))?,
                    seq: seq.parse().map_err(|e| internal("change number", e))?,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(Changes {
            cursor,
            last_seq: last_seq.max(0) as u64,
            changes,
        })
    }

    async fn increment(
        &self,
        tenant: &Tenant,
        collection: &str,
        key: &str,
        inc: Increment,
    ) -> Result<(bool, i64), StoreError> {
        let counter = counter_key(tenant, collection, key);
        let mut call = SCRIPTS.increment.call(&[&counter], &[]);
        let bound = |b: Option<i64>| b.map(|v| v.to_string()).unwrap_or_default();
        call.cmd
            .arg(inc.delta)
            .arg(inc.ttl_ms)
            .arg(bound(inc.min))
            .arg(bound(inc.max));
        let (applied, value) = pair("increment", self.redis.eval(call).await?)?;
        Ok((applied == 1, value))
    }

    async fn counters(
        &self,
        tenant: &Tenant,
        collection: &str,
        keys: &[String],
    ) -> Result<Vec<i64>, StoreError> {
        let counters: Vec<String> = keys
            .iter()
            .map(|k| counter_key(tenant, collection, k))
            .collect();
        let refs: Vec<&str> = counters.iter().map(String::as_str).collect();
        let reply = self.redis.eval(SCRIPTS.counters.call(&refs, &[])).await?;
        Vec::<i64>::from_redis_value(reply).map_err(|e| internal("counters", e))
    }

    async fn acquire_lock(
        &self,
        tenant: &Tenant,
        name: &str,
        lease_id: &str,
        ttl_ms: u64,
    ) -> Result<Acquire, StoreError> {
        let (lock, fence) = lock_keys(tenant, name);
        let mut call = SCRIPTS.lock_acquire.call(&[&lock, &fence], &[]);
        call.cmd.arg(lease_id).arg(ttl_ms);
        let (status, n) = pair("lock", self.redis.eval(call).await?)?;
        Ok(if status == 1 {
            Acquire::Acquired {
                fencing_token: n as u64,
            }
        } else {
            Acquire::Held {
                retry_after_ms: n.max(0) as u64,
            }
        })
    }

    async fn renew_lock(
        &self,
        tenant: &Tenant,
        name: &str,
        lease_id: &str,
        ttl_ms: u64,
    ) -> Result<Option<u64>, StoreError> {
        let (lock, _) = lock_keys(tenant, name);
        let mut call = SCRIPTS.lock_renew.call(&[&lock], &[]);
        call.cmd.arg(lease_id).arg(ttl_ms);
        let (status, fence) = pair("renew", self.redis.eval(call).await?)?;
        Ok((status == 1).then_some(fence as u64))
    }

    async fn release_lock(
        &self,
        tenant: &Tenant,
        name: &str,
        lease_id: &str,
    ) -> Result<bool, StoreError> {
        let (lock, _) = lock_keys(tenant, name);
        let mut call = SCRIPTS.lock_release.call(&[&lock], &[]);
        call.cmd.arg(lease_id);
        let released = i64::from_redis_value(self.redis.eval(call).await?)
            .map_err(|e| internal("release", e))?;
        Ok(released == 1)
    }
}
