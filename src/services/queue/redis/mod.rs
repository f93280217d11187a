//! Queues on Redis: every key of a queue starts with its prefix
//! `dl:<tenant>:q:{<queue>}:` (see `lua/prelude.lua` for the layout), so
//! every script touches one slot, on a cluster too. The per-tenant index
//! of queues with schedules is `dl:<tenant>:qx:{schedules}`.

use std::sync::Arc;

use async_trait::async_trait;
use deadpool_redis::redis::{self, FromRedisValue, Value};

use super::store::{Limits, Store, StoredSchedule};
use super::{
    Dead, Enqueued, LeaseCheck, Leased, NewMessage, QUEUE_SPACE, SCHEDULE_INDEX_SPACE, Stats,
    encode_headers,
};
use crate::keys::{self, Tenant};
use crate::store::StoreError;
use crate::store::redis::{Redis, ScriptCall};

mod replies;
mod scripts;

use replies::{int, internal, items, text};
use scripts::SCRIPTS;

fn prefix(tenant: &Tenant, queue: &str) -> String {
    let mut key = keys::key(tenant, QUEUE_SPACE, queue, &[]);
    key.push(':');
    key
}

fn index_key(tenant: &Tenant) -> String {
    keys::key(tenant, SCHEDULE_INDEX_SPACE, "schedules", &[])
}

/// The 12 ARGV fields of one message (see `enqueue_one`).
fn message_args(call: &mut ScriptCall<'_>, m: &NewMessage) {
    call.cmd
        .arg(m.payload.as_slice())
        .arg(encode_headers(&m.headers))
        .arg(&m.dedup_id)
        .arg(m.dedup_window_ms)
        .arg(m.delay_ms)
        .arg(m.not_before_ms)
        .arg(m.priority)
        .arg(&m.group)
        .arg(m.max_attempts)
        .arg(m.backoff.encode())
        .arg(m.lease_ms)
        .arg(m.expire_at_ms);
}

pub struct RedisQueues {
    redis: Arc<Redis>,
}

impl RedisQueues {
    pub fn new(redis: Arc<Redis>) -> Self {
        Self { redis }
    }

    async fn run(&self, call: ScriptCall<'_>) -> Result<Value, StoreError> {
        self.redis.eval(call).await
    }
}

fn lease_check<T>(status: i64, done: T) -> LeaseCheck<T> {
    if status == 0 {
        LeaseCheck::Lost
    } else {
        LeaseCheck::Done(done)
    }
}

#[async_trait]
impl Store for RedisQueues {
    async fn now_ms(&self) -> Result<u64, StoreError> {
        let reply = self
            .redis
            .exec("TIME", vec![redis::cmd("TIME")])
            .await?
            .pop()
            .ok_or_else(|| internal("time", "no reply"))?
            .map_err(|e| StoreError::from_redis(&e))?;
        let (secs, micros): (u64, u64) =
            FromRedisValue::from_redis_value(reply).map_err(|e| internal("time", e))?;
        Ok(secs * 1000 + micros / 1000)
    }

    async fn enqueue(
        &self,
        tenant: &Tenant,
        queue: &str,
        messages: &[NewMessage],
        limits: Limits,
    ) -> Result<Vec<Enqueued>, StoreError> {
        let p = prefix(tenant, queue);
        let mut call = SCRIPTS.enqueue.call(&[&p], &[limits.max_messages]);
        for m in messages {
            message_args(&mut call, m);
        }
        items(self.run(call).await?, "enqueue")?
            .into_iter()
            .map(|item| {
                let pair = items(item, "enqueue")?;
                let [status, id] = pair.as_slice() else {
                    return Err(internal("enqueue", "pair"));
                };
                Ok(match int(status, "status")? {
                    1 => Enqueued::New(text(id, "id")?),
                    2 => Enqueued::Duplicate(text(id, "id")?),
                    _ => Enqueued::Full,
                })
            })
            .collect()
    }

    async fn lease(
        &self,
        tenant: &Tenant,
        queue: &str,
        max: usize,
        lease_ms: Option<u64>,
        seeds: &[String],
        random: f64,
    ) -> Result<Leased, StoreError> {
        let p = prefix(tenant, queue);
        let mut call = SCRIPTS
            .lease
            .call(&[&p], &[max as u64, lease_ms.unwrap_or(0)]);
        call.cmd.arg(random);
        for seed in seeds {
            call.cmd.arg(seed);
        }
        replies::leased(self.run(call).await?)
    }

    async fn ack_many(
        &self,
        tenant: &Tenant,
        queue: &str,
        acks: &[(String, String)],
        limits: Limits,
    ) -> Result<Vec<LeaseCheck<()>>, StoreError> {
        let p = prefix(tenant, queue);
        let mut call = SCRIPTS.ack.call(&[&p], &[]);
        call.cmd.arg(limits.done_retention_ms);
        for (id, token) in acks {
            call.cmd.arg(id).arg(token);
        }
        items(self.run(call).await?, "ack")?
            .iter()
            .map(|status| Ok(lease_check(int(status, "ack")?, ())))
            .collect()
    }

    async fn nack(
        &self,
        tenant: &Tenant,
        queue: &str,
        id: &str,
        token: &str,
        retry_after_ms: Option<u64>,
        dead: bool,
        reason: &str,
        random: f64,
    ) -> Result<LeaseCheck<bool>, StoreError> {
        let p = prefix(tenant, queue);
        let mut call = SCRIPTS.nack.call(&[&p], &[]);
        call.cmd
            .arg(id)
            .arg(token)
            .arg(retry_after_ms.map_or(-1, |ms| ms as i64))
            .arg(u8::from(dead))
            .arg(reason)
            .arg(random);
        let status = int(&self.run(call).await?, "nack")?;
        Ok(lease_check(status, status == 2))
    }

    async fn give_back(
        &self,
        tenant: &Tenant,
        queue: &str,
        given: &[(String, String)],
    ) -> Result<u64, StoreError> {
        let p = prefix(tenant, queue);
        let mut call = SCRIPTS.give_back.call(&[&p], &[]);
        for (id, token) in given {
            call.cmd.arg(id).arg(token);
        }
        Ok(int(&self.run(call).await?, "give_back")?.max(0) as u64)
    }

    async fn extend(
        &self,
        tenant: &Tenant,
        queue: &str,
        id: &str,
        token: &str,
        lease_ms: u64,
    ) -> Result<LeaseCheck<u64>, StoreError> {
        let p = prefix(tenant, queue);
        let mut call = SCRIPTS.extend.call(&[&p], &[]);
        call.cmd.arg(id).arg(token).arg(lease_ms);
        let le = int(&self.run(call).await?, "extend")?;
        Ok(lease_check(le, le.max(0) as u64))
    }

    async fn cancel(&self, tenant: &Tenant, queue: &str, id: &str) -> Result<bool, StoreError> {
        let p = prefix(tenant, queue);
        let mut call = SCRIPTS.cancel.call(&[&p], &[]);
        call.cmd.arg(id);
        Ok(int(&self.run(call).await?, "cancel")? == 1)
    }

    async fn list_dead(
        &self,
        tenant: &Tenant,
        queue: &str,
        cursor: u64,
        limit: usize,
    ) -> Result<Vec<Dead>, StoreError> {
        let p = prefix(tenant, queue);
        let call = SCRIPTS.list_dead.call(&[&p], &[cursor, limit as u64]);
        replies::dead(self.run(call).await?)
    }

    async fn redrive(
        &self,
        tenant: &Tenant,
        queue: &str,
        ids: &[String],
        limit: usize,
    ) -> Result<u64, StoreError> {
        let p = prefix(tenant, queue);
        let mut call = SCRIPTS.redrive.call(&[&p], &[limit as u64]);
        for id in ids {
            call.cmd.arg(id);
        }
        Ok(int(&self.run(call).await?, "redrive")?.max(0) as u64)
    }

    async fn purge(
        &self,
        tenant: &Tenant,
        queue: &str,
        ids: &[String],
        limit: usize,
    ) -> Result<u64, StoreError> {
        let p = prefix(tenant, queue);
        let mut call = SCRIPTS.purge.call(&[&p], &[limit as u64]);
        for id in ids {
            call.cmd.arg(id);
        }
        Ok(int(&self.run(call).await?, "purge")?.max(0) as u64)
    }

    async fn set_paused(
        &self,
        tenant: &Tenant,
        queue: &str,
        paused: bool,
    ) -> Result<(), StoreError> {
        let key = format!("{}paused", prefix(tenant, queue));
        let cmd = if paused {
            let mut c = redis::cmd("SET");
            c.arg(&key).arg(1);
            c
        } else {
            let mut c = redis::cmd("DEL");
            c.arg(&key);
            c
        };
        for reply in self.redis.exec("queue pause", vec![cmd]).await? {
            reply.map_err(|e| StoreError::from_redis(&e))?;
        }
        Ok(())
    }

    async fn stats(&self, tenant: &Tenant, queue: &str) -> Result<Stats, StoreError> {
        let p = prefix(tenant, queue);
        replies::stats(self.run(SCRIPTS.stats.call(&[&p], &[])).await?)
    }

    async fn put_schedule(
        &self,
        tenant: &Tenant,
        queue: &str,
        schedule: &StoredSchedule,
        max: usize,
    ) -> Result<bool, StoreError> {
        // The index first: a schedule is never stored where the ticker
        // would not look (the index is in another slot).
        let mut add = redis::cmd("SADD");
        add.arg(index_key(tenant)).arg(queue);
        for reply in self.redis.exec("SADD queue index", vec![add]).await? {
            reply.map_err(|e| StoreError::from_redis(&e))?;
        }
        let p = prefix(tenant, queue);
        let mut call = SCRIPTS.schedule_put.call(&[&p], &[]);
        call.cmd
            .arg(&schedule.id)
            .arg(&schedule.definition)
            .arg(schedule.next_ms)
            .arg(max);
        Ok(int(&self.run(call).await?, "schedule")? == 1)
    }

    async fn delete_schedule(
        &self,
        tenant: &Tenant,
        queue: &str,
        id: &str,
    ) -> Result<bool, StoreError> {
        let p = prefix(tenant, queue);
        let mut call = SCRIPTS.schedule_delete.call(&[&p], &[]);
        call.cmd.arg(id);
        Ok(int(&self.run(call).await?, "schedule")? == 1)
    }

    async fn schedules(
        &self,
        tenant: &Tenant,
        queue: &str,
    ) -> Result<Vec<StoredSchedule>, StoreError> {
        let p = prefix(tenant, queue);
        items(
            self.run(SCRIPTS.schedule_list.call(&[&p], &[])).await?,
            "schedules",
        )?
        .into_iter()
        .map(|item| {
            let f = items(item, "schedule")?;
            let [id, def, next] = f.as_slice() else {
                return Err(internal("schedule", "fields"));
            };
            Ok(StoredSchedule {
                id: text(id, "id")?,
                definition: text(def, "definition")?,
                next_ms: int(next, "next")?.max(0) as u64,
            })
        })
        .collect()
    }

    async fn scheduled_queues(&self, tenant: &Tenant) -> Result<Vec<String>, StoreError> {
        let mut members = redis::cmd("SMEMBERS");
        members.arg(index_key(tenant));
        let reply = self
            .redis
            .exec("SMEMBERS queue index", vec![members])
            .await?
            .pop()
            .ok_or_else(|| internal("index", "no reply"))?
            .map_err(|e| StoreError::from_redis(&e))?;
        Vec::<String>::from_redis_value(reply).map_err(|e| internal("index", e))
    }

    async fn fire(
        &self,
        tenant: &Tenant,
        queue: &str,
        id: &str,
        expected_next_ms: u64,
        next_ms: u64,
        message: &NewMessage,
        limits: Limits,
    ) -> Result<bool, StoreError> {
        let p = prefix(tenant, queue);
        let mut call = SCRIPTS.fire.call(&[&p], &[]);
        call.cmd
            .arg(id)
            .arg(expected_next_ms)
            .arg(next_ms)
            .arg(limits.max_messages);
        message_args(&mut call, message);
        Ok(int(&self.run(call).await?, "fire")? == 1)
    }
}
