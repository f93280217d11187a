//! Topics on Redis: one stream per topic at `…:tp:{<topic>}`, with its
//! consumer groups inside it, so every call is one key on one slot.
//! Payloads are the field `p`, headers the fields `h:<name>`; beside it,
//! `…:tp:{<topic>}:trimmed` keeps the newest id retention removed.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use deadpool_redis::redis::{self, FromRedisValue, Value};

use super::store::Store;
use super::{GroupRead, GroupStats, Msg, MsgId, NewMsg, Read, Retention, SPACE, Stats};
use crate::keys::{self, Tenant};
use crate::store::StoreError;
use crate::store::redis::{NamedScript, Redis};

struct Scripts {
    publish: NamedScript,
    read: NamedScript,
    group_read: NamedScript,
    stats: NamedScript,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    publish: NamedScript::new("topic.publish", &[include_str!("lua/publish.lua")]),
    read: NamedScript::read_only("topic.read", &[include_str!("lua/read.lua")]),
    group_read: NamedScript::new("topic.group_read", &[include_str!("lua/group_read.lua")]),
    stats: NamedScript::read_only("topic.stats", &[include_str!("lua/stats.lua")]),
});

fn key(tenant: &Tenant, topic: &str) -> String {
    keys::key(tenant, SPACE, topic, &[])
}

/// The id of the newest message retention removed from the topic.
fn trimmed_key(tenant: &Tenant, topic: &str) -> String {
    keys::key(tenant, SPACE, topic, &["trimmed"])
}

fn internal(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::internal(format!("topic reply ({what}): {e}"))
}

fn text(v: &Value, what: &str) -> Result<String, StoreError> {
    String::from_redis_value(v.clone()).map_err(|e| internal(what, e))
}

fn items(v: Value, what: &str) -> Result<Vec<Value>, StoreError> {
    match v {
        Value::Nil => Ok(Vec::new()),
        v => Vec::<Value>::from_redis_value(v).map_err(|e| internal(what, e)),
    }
}

fn id(v: &Value, what: &str) -> Result<MsgId, StoreError> {
    let t = text(v, what)?;
    MsgId::parse(&t).ok_or_else(|| internal(what, format!("not an id: {t}")))
}

fn optional_id(v: &Value, what: &str) -> Result<Option<MsgId>, StoreError> {
    let t = text(v, what)?;
    Ok(if t.is_empty() { None } else { MsgId::parse(&t) })
}

fn int(v: &Value, what: &str) -> Result<u64, StoreError> {
    u64::from_redis_value(v.clone()).map_err(|e| internal(what, e))
}

/// `[id, [field, value...]]` (and the delivery count for group reads).
fn entry(v: Value, deliveries: u32) -> Result<Msg, StoreError> {
    let parts = items(v, "entry")?;
    let (Some(id_v), Some(fields)) = (parts.first(), parts.get(1)) else {
        return Err(internal("entry", "shape"));
    };
    let deliveries = match parts.get(2) {
        Some(n) => int(n, "deliveries")? as u32,
        None => deliveries,
    };
    let fields = items(fields.clone(), "fields")?;
    let mut msg = Msg {
        id: id(id_v, "id")?,
        payload: Vec::new(),
        headers: BTreeMap::new(),
        deliveries,
    };
    for pair in fields.chunks(2) {
        let [name, value] = pair else {
            return Err(internal("fields", "odd"));
        };
        let name = text(name, "field")?;
        if name == "p" {
            msg.payload =
                Vec::<u8>::from_redis_value(value.clone()).map_err(|e| internal("payload", e))?;
        } else if let Some(header) = name.strip_prefix("h:") {
            msg.headers
                .insert(header.to_owned(), text(value, "header")?);
        }
    }
    Ok(msg)
}

pub struct RedisTopics(pub Arc<Redis>);

impl RedisTopics {
    async fn exec(&self, what: &'static str, cmd: redis::Cmd) -> Result<Value, StoreError> {
        self.0
            .exec(what, vec![cmd])
            .await?
            .pop()
            .ok_or_else(|| internal(what, "no reply"))?
            .map_err(|e| StoreError::from_redis(&e))
    }
}

#[async_trait]
impl Store for RedisTopics {
    async fn publish(
        &self,
        tenant: &Tenant,
        topic: &str,
        msgs: &[NewMsg],
        retention: Retention,
    ) -> Result<Vec<MsgId>, StoreError> {
        let (k, t) = (key(tenant, topic), trimmed_key(tenant, topic));
        let mut call = SCRIPTS
            .publish
            .call(&[&k, &t], &[retention.max_len, retention.max_age_ms]);
        for m in msgs {
            call.cmd.arg(&m.payload).arg(m.headers.len());
            for (name, value) in &m.headers {
                call.cmd.arg(name).arg(value);
            }
        }
        items(self.0.eval(call).await?, "publish")?
            .iter()
            .map(|v| id(v, "publish"))
            .collect()
    }

    async fn read(
        &self,
        tenant: &Tenant,
        topic: &str,
        after: MsgId,
        count: usize,
    ) -> Result<Read, StoreError> {
        let (k, t) = (key(tenant, topic), trimmed_key(tenant, topic));
        let mut call = SCRIPTS.read.call(&[&k, &t], &[]);
        call.cmd.arg(after.to_string()).arg(count);
        let reply = items(self.0.eval(call).await?, "read")?;
        let [deleted, first, entries] = reply.as_slice() else {
            return Err(internal("read", "shape"));
        };
        Ok(Read {
            max_deleted: id(deleted, "deleted")?,
            first_kept: optional_id(first, "first")?,
            messages: items(entries.clone(), "entries")?
                .into_iter()
                .map(|e| entry(e, 0))
                .collect::<Result<_, _>>()?,
        })
    }

    async fn last_id(&self, tenant: &Tenant, topic: &str) -> Result<MsgId, StoreError> {
        let mut cmd = redis::cmd("XREVRANGE");
        cmd.arg(key(tenant, topic))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1);
        let last = items(self.exec("XREVRANGE topic", cmd).await?, "last")?;
        match last.into_iter().next() {
            Some(e) => Ok(entry(e, 0)?.id),
            None => Ok(MsgId::ZERO),
        }
    }

    async fn group_read(
        &self,
        tenant: &Tenant,
        topic: &str,
        read: &GroupRead,
        retention: Retention,
    ) -> Result<Vec<Msg>, StoreError> {
        let k = key(tenant, topic);
        let mut call = SCRIPTS.group_read.call(&[&k], &[]);
        call.cmd
            .arg(&read.group)
            .arg(&read.consumer)
            .arg(read.start.to_string())
            .arg(read.count)
            .arg(read.claim_idle_ms)
            .arg(retention.max_age_ms);
        items(self.0.eval(call).await?, "group_read")?
            .into_iter()
            .map(|e| entry(e, 1))
            .collect()
    }

    async fn ack(
        &self,
        tenant: &Tenant,
        topic: &str,
        group: &str,
        ids: &[MsgId],
    ) -> Result<u64, StoreError> {
        let mut cmd = redis::cmd("XACK");
        cmd.arg(key(tenant, topic)).arg(group);
        for id in ids {
            cmd.arg(id.to_string());
        }
        int(&self.exec("XACK topic", cmd).await?, "acked")
    }

    async fn stats(&self, tenant: &Tenant, topic: &str) -> Result<Option<Stats>, StoreError> {
        let k = key(tenant, topic);
        let reply = items(self.0.eval(SCRIPTS.stats.call(&[&k], &[])).await?, "stats")?;
        let mut reply = reply.into_iter();
        if int(&reply.next().unwrap_or(Value::Nil), "exists")? == 0 {
            return Ok(None);
        }
        let (Some(len), Some(first), Some(last)) = (reply.next(), reply.next(), reply.next())
        else {
            return Err(internal("stats", "shape"));
        };
        let groups = reply
            .map(|g| {
                let f = items(g, "group")?;
                let [name, pending, consumers, last] = f.as_slice() else {
                    return Err(internal("group", "shape"));
                };
                Ok(GroupStats {
                    name: text(name, "name")?,
                    pending: int(pending, "pending")?,
                    consumers: int(consumers, "consumers")?,
                    last_delivered: id(last, "last delivered")?,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(Some(Stats {
            length: int(&len, "length")?,
            first: optional_id(&first, "first")?,
            last: optional_id(&last, "last")?,
            groups,
        }))
    }

    async fn delete(&self, tenant: &Tenant, topic: &str) -> Result<bool, StoreError> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(key(tenant, topic)).arg(trimmed_key(tenant, topic));
        Ok(int(&self.exec("DEL topic", cmd).await?, "deleted")? >= 1)
    }
}
