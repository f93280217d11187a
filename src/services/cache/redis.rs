//! Cache entries on Redis. An entry and its lease share the caller key's
//! slot; a tag's index and invalidation time share the tag's slot. So every
//! script touches one slot, and the multi-slot steps (index the tags, then
//! write; take the index, then delete each entry) are ordered so that a
//! concurrent invalidation is never missed: see `lua/tag_add.lua`.

use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use deadpool_redis::redis::{FromRedisValue, Value};

use super::entry::{ENTRY_FIELDS, read_entry};
use super::store::Store;
use super::{
    ENTRY_SPACE, Found, LeaseResult, MAX_WAIT_HINT_US, SetOp, SetOutcome, SetResult,
    TAG_INDEX_SLACK_US, TAG_INVALIDATION_MEMORY_US, TAG_SPACE,
};
use crate::keys::{self, Tenant};
use crate::store::StoreError;
use crate::store::redis::{NamedScript, Redis};

struct Scripts {
    set: NamedScript,
    delete: NamedScript,
    get_or_lease: NamedScript,
    tag_add: NamedScript,
    tag_take: NamedScript,
    tag_done: NamedScript,
    invalidate_entry: NamedScript,
}

/// The cache's helpers, after the shared prelude, before each body.
const PRELUDE: &str = include_str!("lua/prelude.lua");

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    set: NamedScript::new("cache.set", &[PRELUDE, include_str!("lua/set.lua")]),
    delete: NamedScript::new("cache.delete", &[PRELUDE, include_str!("lua/delete.lua")]),
    get_or_lease: NamedScript::new(
        "cache.get_or_lease",
        &[PRELUDE, include_str!("lua/get_or_lease.lua")],
    ),
    tag_add: NamedScript::new("cache.tag_add", &[include_str!("lua/tag_add.lua")]),
    tag_take: NamedScript::new("cache.tag_take", &[include_str!("lua/tag_take.lua")]),
    tag_done: NamedScript::new("cache.tag_done", &[include_str!("lua/tag_done.lua")]),
    invalidate_entry: NamedScript::new(
        "cache.invalidate_entry",
        &[PRELUDE, include_str!("lua/invalidate_entry.lua")],
    ),
});

/// Index scores outlive the entry a little, so clock rounding never drops a
/// live key from its tags.
const TAG_INDEX_SLACK_MS: u64 = TAG_INDEX_SLACK_US / 1000;

fn entry_key(tenant: &Tenant, key: &str) -> String {
    keys::key(tenant, ENTRY_SPACE, key, &[])
}

fn lease_key(tenant: &Tenant, key: &str) -> String {
    keys::key(tenant, ENTRY_SPACE, key, &["lease"])
}

fn tag_index_key(tenant: &Tenant, tag: &str) -> String {
    keys::key(tenant, TAG_SPACE, tag, &["idx"])
}

fn tag_invalidated_key(tenant: &Tenant, tag: &str) -> String {
    keys::key(tenant, TAG_SPACE, tag, &["inv"])
}

fn internal(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::internal(format!("cache script reply ({what}): {e}"))
}

/// Reads the entry fields `value, content_type, version, ttl, stale,
/// expires_in, tags` that follow a status in a script reply.
fn found(fields: &[Value]) -> Result<Found, StoreError> {
    let [value, content_type, version, ttl, stale, expires_in, tags] = fields else {
        return Err(internal("entry", format!("{} fields", fields.len())));
    };
    let text = |v: &Value| String::from_redis_value(v.clone()).map_err(|e| internal("text", e));
    let number = |v: &Value| i64::from_redis_value(v.clone()).map_err(|e| internal("number", e));
    Ok(Found {
        value: Vec::<u8>::from_redis_value(value.clone()).map_err(|e| internal("value", e))?,
        content_type: text(content_type)?,
        version: text(version)?.parse().map_err(|e| internal("version", e))?,
        ttl_us: number(ttl)?.max(0) as u64,
        stale: number(stale)? == 1,
        expires_in_us: number(expires_in)?.max(0) as u64,
        tags: super::split_tags(&text(tags)?),
    })
}

fn status_and_fields(value: Value) -> Result<(i64, Vec<Value>), StoreError> {
    let mut items = Vec::<Value>::from_redis_value(value).map_err(|e| internal("array", e))?;
    if items.is_empty() {
        return Err(internal("array", "empty"));
    }
    let status = i64::from_redis_value(items.remove(0)).map_err(|e| internal("status", e))?;
    Ok((status, items))
}

pub struct RedisCache {
    redis: Arc<Redis>,
}

impl RedisCache {
    pub fn new(redis: Arc<Redis>) -> Self {
        Self { redis }
    }
}

#[async_trait]
impl Store for RedisCache {
    async fn get_many(
        &self,
        tenant: &Tenant,
        keys: &[String],
    ) -> Result<Vec<Option<Found>>, StoreError> {
        // A plain HMGET and PTTL rather than a script: a Get is the cache's
        // hottest call, and Redis runs these two in a fraction of a script's
        // time. Both reach the key's node in one pipeline. The entry's
        // expiry is Redis's own (PEXPIREAT at `ea`), and its fresh time
        // left follows from the time to expiry, `fu - now = (ea - now) -
        // (ea - fu)`, so no clock but Redis's is read. A Set landing between
        // the two commands can pair the old value with the new entry's
        // expiry: a read racing a write may report either's times.
        let mut cmds = Vec::with_capacity(keys.len() * 2);
        for key in keys {
            let entry = entry_key(tenant, key);
            let mut fields = deadpool_redis::redis::cmd("HMGET");
            fields.arg(&entry).arg(&ENTRY_FIELDS[..]);
            let mut pttl = deadpool_redis::redis::cmd("PTTL");
            pttl.arg(&entry);
            cmds.push(fields);
            cmds.push(pttl);
        }
        let mut replies = self
            .redis
            .exec("HMGET cache entry", cmds)
            .await?
            .into_iter();
        let mut found = Vec::with_capacity(keys.len());
        while let (Some(fields), Some(pttl)) = (replies.next(), replies.next()) {
            let fields = fields.map_err(|e| StoreError::from_redis(&e))?;
            let pttl = pttl.map_err(|e| StoreError::from_redis(&e))?;
            let pttl = i64::from_redis_value(pttl).map_err(|e| internal("pttl", e))?;
            let fields =
                Vec::<Value>::from_redis_value(fields).map_err(|e| internal("hmget", e))?;
            found.push(read_entry(fields, pttl)?);
        }
        if found.len() != keys.len() {
            return Err(internal(
                "get",
                format!("{} of {} replies", found.len(), keys.len()),
            ));
        }
        Ok(found)
    }

    async fn set_many(&self, tenant: &Tenant, ops: &[SetOp]) -> Result<Vec<SetResult>, StoreError> {
        // 1. Index every tag first and learn when each was last invalidated.
        let index_keys: Vec<(String, String)> = ops
            .iter()
            .flat_map(|op| op.tags.iter())
            .map(|tag| (tag_index_key(tenant, tag), tag_invalidated_key(tenant, tag)))
            .collect();
        let mut tag_calls = Vec::with_capacity(index_keys.len());
        let mut keys_iter = index_keys.iter();
        for op in ops {
            let lifetime_ms = (op.ttl_us + op.stale_us).div_ceil(1000) + TAG_INDEX_SLACK_MS;
            for _ in &op.tags {
                let (index, invalidated) = keys_iter
                    .next()
                    .ok_or_else(|| StoreError::internal("tag keys out of step"))?;
                let mut call = SCRIPTS.tag_add.call(&[index, invalidated], &[]);
                call.cmd.arg(&op.key).arg(lifetime_ms);
                tag_calls.push(call);
            }
        }
        let mut invalidated_at = if tag_calls.is_empty() {
            Vec::new()
        } else {
            self.redis.eval_batch(&tag_calls).await?
        }
        .into_iter();

        // 2. Write each entry, refusing a lease older than an invalidation.
        let entry_keys: Vec<(String, String)> = ops
            .iter()
            .map(|op| (entry_key(tenant, &op.key), lease_key(tenant, &op.key)))
            .collect();
        let mut calls = Vec::with_capacity(ops.len());
        for (op, (entry, lease)) in ops.iter().zip(&entry_keys) {
            let mut last_invalidation: u64 = 0;
            for _ in &op.tags {
                let at = invalidated_at
                    .next()
                    .map(|v| u64::from_redis_value(v).map_err(|e| internal("tag time", e)))
                    .transpose()?
                    .unwrap_or(0);
                last_invalidation = last_invalidation.max(at);
            }
            let mut call = SCRIPTS.set.call(&[entry, lease], &[]);
            call.cmd
                .arg(op.value.as_slice())
                .arg(&op.content_type)
                .arg(op.ttl_us)
                .arg(op.stale_us)
                .arg(op.condition.code())
                .arg(op.expected_version.map_or(-1, |v| v as i64))
                .arg(op.lease_token.as_deref().unwrap_or(""))
                .arg(super::join_tags(&op.tags))
                .arg(last_invalidation);
            calls.push(call);
        }
        self.redis
            .eval_batch(&calls)
            .await?
            .into_iter()
            .map(|reply| {
                let (code, version): (i64, i64) =
                    FromRedisValue::from_redis_value(reply).map_err(|e| internal("set", e))?;
                let outcome = SetOutcome::from_code(code)
                    .ok_or_else(|| internal("set", format!("outcome {code}")))?;
                Ok(SetResult {
                    outcome,
                    version: version.max(0) as u64,
                })
            })
            .collect()
    }

    async fn delete(&self, tenant: &Tenant, key: &str) -> Result<bool, StoreError> {
        let (entry, lease) = (entry_key(tenant, key), lease_key(tenant, key));
        let reply = self
            .redis
            .eval_batch(&[SCRIPTS.delete.call(&[&entry, &lease], &[])])
            .await?
            .pop()
            .ok_or_else(|| internal("delete", "no reply"))?;
        // Its tag indexes keep the key until it expires from them: taking
        // it out here could race a concurrent re-Set of the same key.
        let (deleted, _tags): (i64, String) =
            FromRedisValue::from_redis_value(reply).map_err(|e| internal("delete", e))?;
        Ok(deleted == 1)
    }

    async fn invalidate_tags(&self, tenant: &Tenant, tags: &[String]) -> Result<u64, StoreError> {
        let remember_ms = TAG_INVALIDATION_MEMORY_US / 1000;
        let tag_keys: Vec<(String, String)> = tags
            .iter()
            .map(|t| (tag_index_key(tenant, t), tag_invalidated_key(tenant, t)))
            .collect();
        let takes: Vec<_> = tag_keys
            .iter()
            .map(|(index, invalidated)| {
                SCRIPTS.tag_take.call(&[index, invalidated], &[remember_ms])
            })
            .collect();
        let taken = self.redis.eval_batch(&takes).await?;

        let mut targets: Vec<(String, String, &str, String)> = Vec::new();
        for (tag, members) in tags.iter().zip(taken) {
            let members =
                Vec::<String>::from_redis_value(members).map_err(|e| internal("members", e))?;
            for member in members {
                targets.push((
                    entry_key(tenant, &member),
                    lease_key(tenant, &member),
                    tag,
                    member,
                ));
            }
        }
        if targets.is_empty() {
            return Ok(0);
        }
        let calls: Vec<_> = targets
            .iter()
            .map(|(entry, lease, tag, _)| {
                let mut call = SCRIPTS.invalidate_entry.call(&[entry, lease], &[]);
                call.cmd.arg(*tag);
                call
            })
            .collect();
        let mut invalidated = 0;
        for reply in self.redis.eval_batch(&calls).await? {
            invalidated +=
                i64::from_redis_value(reply).map_err(|e| internal("invalidate", e))? as u64;
        }
        // Only now leave the indexes: a call cut off before this point is
        // completed by a retry, which finds the same members.
        let done: Vec<_> = tag_keys
            .iter()
            .zip(tags)
            .filter_map(|((index, _), tag)| {
                let members: Vec<&str> = targets
                    .iter()
                    .filter(|(_, _, t, _)| *t == tag.as_str())
                    .map(|(_, _, _, member)| member.as_str())
                    .collect();
                (!members.is_empty()).then(|| {
                    let mut call = SCRIPTS.tag_done.call(&[index], &[]);
                    for member in members {
                        call.cmd.arg(member);
                    }
                    call
                })
            })
            .collect();
        self.redis.eval_batch(&done).await?;
        Ok(invalidated)
    }

    async fn get_or_lease(
        &self,
        tenant: &Tenant,
        key: &str,
        lease_ttl_us: u64,
        new_token: &str,
    ) -> Result<LeaseResult, StoreError> {
        let (entry, lease) = (entry_key(tenant, key), lease_key(tenant, key));
        let mut call = SCRIPTS
            .get_or_lease
            .call(&[&entry, &lease], &[lease_ttl_us]);
        call.cmd.arg(new_token).arg(MAX_WAIT_HINT_US);
        let reply = self
            .redis
            .eval_batch(&[call])
            .await?
            .pop()
            .ok_or_else(|| internal("lease", "no reply"))?;
        let (status, fields) = status_and_fields(reply)?;
        Ok(match status {
            1 => LeaseResult::Hit(found(&fields)?),
            2 => LeaseResult::Leased {
                token: new_token.to_owned(),
                stale: if fields.is_empty() {
                    None
                } else {
                    Some(found(&fields)?)
                },
            },
            3 => LeaseResult::Stale(found(&fields)?),
            4 => {
                let [wait] = fields.as_slice() else {
                    return Err(internal("lease", "wait without a hint"));
                };
                LeaseResult::Wait {
                    retry_after_us: i64::from_redis_value(wait.clone())
                        .map_err(|e| internal("lease", e))?
                        .max(0) as u64,
                }
            }
            other => return Err(internal("lease", format!("status {other}"))),
        })
    }
}
