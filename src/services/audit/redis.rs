//! The audit log on Redis: one stream per tenant, `dl:<tenant>:au:{log}`,
//! trimmed to about `audit.max_entries`.

use std::sync::Arc;

use async_trait::async_trait;
use deadpool_redis::redis::{self, FromRedisValue};

use super::LOG_SPACE;
use super::sink::Store;
use crate::audit::{AuditEvent, Stored};
use crate::keys::{self, Tenant};
use crate::store::StoreError;
use crate::store::redis::Redis;

pub struct RedisAudit {
    redis: Arc<Redis>,
}

impl RedisAudit {
    pub fn new(redis: Arc<Redis>) -> Self {
        Self { redis }
    }
}

fn log_key(tenant: &Tenant) -> String {
    keys::key(tenant, LOG_SPACE, "log", &[])
}

fn internal(e: impl std::fmt::Display) -> StoreError {
    StoreError::internal(format!("audit stream reply: {e}"))
}

#[async_trait]
impl Store for RedisAudit {
    async fn append(
        &self,
        tenant: &Tenant,
        events: &[AuditEvent],
        max_entries: u64,
    ) -> Result<(), StoreError> {
        let key = log_key(tenant);
        let commands = events
            .iter()
            .map(|e| {
                let mut cmd = redis::cmd("XADD");
                cmd.arg(&key)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(max_entries)
                    .arg("*")
                    .arg("at")
                    .arg(e.at_us)
                    .arg("who")
                    .arg(&*e.principal)
                    .arg("method")
                    .arg(&e.method)
                    .arg("target")
                    .arg(&e.target)
                    .arg("outcome")
                    .arg(&e.outcome);
                cmd
            })
            .collect();
        for reply in self.redis.exec("XADD audit", commands).await? {
            reply.map_err(|e| StoreError::from_redis(&e))?;
        }
        Ok(())
    }

    async fn list(
        &self,
        tenant: &Tenant,
        limit: usize,
        before: Option<&str>,
    ) -> Result<Vec<Stored>, StoreError> {
        let mut range = redis::cmd("XREVRANGE");
        range
            .arg(log_key(tenant))
            .arg(before.map_or("+".to_owned(), |id| format!("({id}")))
            .arg("-")
            .arg("COUNT")
            .arg(limit);
        let reply = self
            .redis
            .exec("XREVRANGE audit", vec![range])
            .await?
            .pop()
            .ok_or_else(|| internal("no reply"))?
            .map_err(|e| StoreError::from_redis(&e))?;
        let entries =
            Vec::<(String, Vec<(String, String)>)>::from_redis_value(reply).map_err(internal)?;
        Ok(entries
            .into_iter()
            .map(|(id, fields)| {
                let get = |name: &str| {
                    fields
                        .iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.as_str())
                        .unwrap_or("")
                };
                Stored {
                    event: AuditEvent {
                        tenant: tenant.clone(),
                        principal: Arc::from(get("who")),
                        method: get("method").to_owned(),
                        target: get("target").to_owned(),
                        outcome: get("outcome").to_owned(),
                        at_us: get("at").parse().unwrap_or(0),
                    },
                    id,
                }
            })
            .collect())
    }
}
