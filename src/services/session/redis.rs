//! Sessions on Redis. A session, its user's index and any session evicted
//! for it share the user's slot tag, so create + index + eviction is one
//! script even on Redis Cluster. The store sees token hashes only.

use std::{
    collections::BTreeMap,
    sync::{Arc, LazyLock},
};

use async_trait::async_trait;
use deadpool_redis::redis::{FromRedisValue, Value};

use super::store::Store;
use super::{
    CreateOutcome, DataUpdate, NewSession, ONE_TIME_SPACE, OnLimit, SESSION_SPACE, SessionRecord,
    TokenRef, UpdateOutcome, user_tag,
};
use crate::keys::{self, Tenant};
use crate::store::StoreError;
use crate::store::redis::{NamedScript, Redis, ScriptCall};

struct Scripts {
    create: NamedScript,
    get: NamedScript,
    peek: NamedScript,
    update: NamedScript,
    rotate: NamedScript,
    revoke: NamedScript,
    list: NamedScript,
    list_read_only: NamedScript,
    revoke_user: NamedScript,
    one_time_issue: NamedScript,
    one_time_consume: NamedScript,
}

/// The sessions' helpers, after the shared prelude, before each body.
const PRELUDE: &str = include_str!("lua/prelude.lua");

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| {
    let with_prelude = |name, body| NamedScript::new(name, &[PRELUDE, body]);
    Scripts {
        create: with_prelude("session.create", include_str!("lua/create.lua")),
        get: with_prelude("session.get", include_str!("lua/get.lua")),
        peek: NamedScript::read_only("session.peek", &[PRELUDE, include_str!("lua/get.lua")]),
        update: with_prelude("session.update", include_str!("lua/update.lua")),
        rotate: with_prelude("session.rotate", include_str!("lua/rotate.lua")),
        revoke: with_prelude("session.revoke", include_str!("lua/revoke.lua")),
        list: with_prelude("session.list", include_str!("lua/list.lua")),
        list_read_only: NamedScript::read_only(
            "session.list_read_only",
            &[PRELUDE, include_str!("lua/list.lua")],
        ),
        revoke_user: with_prelude("session.revoke_user", include_str!("lua/revoke_user.lua")),
        one_time_issue: NamedScript::new(
            "session.one_time_issue",
            &[include_str!("lua/one_time_issue.lua")],
        ),
        one_time_consume: NamedScript::new(
            "session.one_time_consume",
            &[include_str!("lua/one_time_consume.lua")],
        ),
    }
});

/// The index outlives its longest session by this much.
const INDEX_SLACK_MS: u64 = 60_000;

fn session_key(tenant: &Tenant, token: &TokenRef) -> String {
    keys::key(tenant, SESSION_SPACE, &token.user_tag, &["t", &token.hash])
}

/// Session keys are this prefix plus a token hash.
fn session_prefix(tenant: &Tenant, user_tag: &str) -> String {
    keys::key(tenant, SESSION_SPACE, user_tag, &["t", ""])
}

fn session_index(tenant: &Tenant, user_tag: &str) -> String {
    keys::key(tenant, SESSION_SPACE, user_tag, &["idx"])
}

fn one_time_key(tenant: &Tenant, hash: &str) -> String {
    keys::key(tenant, ONE_TIME_SPACE, hash, &[])
}

fn internal(e: impl std::fmt::Display) -> StoreError {
    StoreError::internal(format!("session script reply: {e}"))
}

fn strings(value: Value) -> Result<Vec<String>, StoreError> {
    Vec::<String>::from_redis_value(value).map_err(internal)
}

fn number(s: &str) -> Result<u64, StoreError> {
    s.parse().map_err(|e| internal(format!("{s:?}: {e}")))
}

/// A session from the values of `SESSION_FIELDS` (see session_prelude.lua).
fn record(fields: &[String]) -> Result<SessionRecord, StoreError> {
    let [
        sid,
        uid,
        data,
        version,
        created,
        last_seen,
        idle,
        absolute,
        ip,
        ua,
    ] = fields
    else {
        return Err(internal(format!("{} session fields", fields.len())));
    };
    Ok(SessionRecord {
        session_id: sid.clone(),
        user_id: uid.clone(),
        data: serde_json::from_str(data).map_err(internal)?,
        version: number(version)?,
        created_us: number(created)?,
        last_seen_us: number(last_seen)?,
        idle_us: number(idle)?,
        absolute_at_us: number(absolute)?,
        client_ip: ip.clone(),
        user_agent: ua.clone(),
    })
}

fn maybe_record(value: Value) -> Result<Option<SessionRecord>, StoreError> {
    let fields = strings(value)?;
    if fields.is_empty() {
        Ok(None)
    } else {
        record(&fields).map(Some)
    }
}

fn to_json(data: &BTreeMap<String, String>) -> Result<String, StoreError> {
    serde_json::to_string(data).map_err(|e| StoreError::internal(e.to_string()))
}

pub struct RedisSessions {
    redis: Arc<Redis>,
}

impl RedisSessions {
    pub fn new(redis: Arc<Redis>) -> Self {
        Self { redis }
    }

    async fn run(&self, call: ScriptCall<'_>) -> Result<Value, StoreError> {
        self.redis.eval(call).await
    }

    /// A user's sessions (`what`: "list" or "count"), pruning the index of
    /// ended ones as it reads; on a full Redis, read without pruning.
    async fn members(
        &self,
        tenant: &Tenant,
        user_id: &str,
        what: &str,
    ) -> Result<Value, StoreError> {
        let user_tag = &user_tag(user_id);
        let index = session_index(tenant, user_tag);
        let call = |script: &'static NamedScript, prune: &str| {
            let mut call = script.call(&[&index], &[]);
            call.cmd
                .arg(user_id)
                .arg(session_prefix(tenant, user_tag))
                .arg(what)
                .arg(prune);
            call
        };
        match self.run(call(&SCRIPTS.list, "1")).await {
            Err(e) if e.kind == crate::store::StoreErrorKind::Full => {
                self.run(call(&SCRIPTS.list_read_only, "0")).await
            }
            other => other,
        }
    }
}

#[async_trait]
impl Store for RedisSessions {
    async fn create(&self, tenant: &Tenant, new: &NewSession) -> Result<CreateOutcome, StoreError> {
        let (key, index) = (
            session_key(tenant, &new.token),
            session_index(tenant, &new.token.user_tag),
        );
        let mut call = SCRIPTS.create.call(&[&key, &index], &[]);
        call.cmd
            .arg(&new.session_id)
            .arg(&new.user_id)
            .arg(to_json(&new.data)?)
            .arg(new.idle_us)
            .arg(new.absolute_us)
            .arg(new.max_sessions)
            .arg(match new.on_limit {
                OnLimit::EvictOldest => 1,
                OnLimit::Reject => 2,
            })
            .arg(&new.client_ip)
            .arg(&new.user_agent)
            .arg(session_prefix(tenant, &new.token.user_tag))
            .arg(&new.token.hash)
            .arg(new.absolute_us.div_ceil(1000) + INDEX_SLACK_MS);
        let mut reply = strings(self.run(call).await?)?.into_iter();
        match reply.next().as_deref() {
            Some("0") => Ok(CreateOutcome::LimitReached),
            Some("1") => {
                let created_us = number(&reply.next().ok_or_else(|| internal("no time"))?)?;
                Ok(CreateOutcome::Created {
                    session: SessionRecord {
                        session_id: new.session_id.clone(),
                        user_id: new.user_id.clone(),
                        data: new.data.clone(),
                        version: 1,
                        created_us,
                        last_seen_us: created_us,
                        idle_us: new.idle_us,
                        absolute_at_us: created_us + new.absolute_us,
                        client_ip: new.client_ip.clone(),
                        user_agent: new.user_agent.clone(),
                    },
                    evicted_session_ids: reply.collect(),
                })
            }
            other => Err(internal(format!("create status {other:?}"))),
        }
    }

    async fn get(
        &self,
        tenant: &Tenant,
        token: &TokenRef,
        touch: bool,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let key = session_key(tenant, token);
        // Without touch it only reads: the form a full Redis still runs.
        let script = if touch { &SCRIPTS.get } else { &SCRIPTS.peek };
        let call = script.call(&[&key], &[u64::from(touch)]);
        maybe_record(self.run(call).await?)
    }

    async fn update(
        &self,
        tenant: &Tenant,
        token: &TokenRef,
        update: &DataUpdate,
        expected_version: Option<u64>,
        max_data_bytes: usize,
    ) -> Result<Option<UpdateOutcome>, StoreError> {
        let key = session_key(tenant, token);
        let (mode, data, remove) = match update {
            DataUpdate::Merge { set, remove } => (1, set, remove.as_slice()),
            DataUpdate::Replace(data) => (2, data, &[][..]),
        };
        let mut call = SCRIPTS.update.call(&[&key], &[mode]);
        call.cmd
            .arg(to_json(data)?)
            .arg(serde_json::to_string(remove).map_err(|e| StoreError::internal(e.to_string()))?)
            .arg(expected_version.map_or(-1, |v| v as i64))
            .arg(max_data_bytes);
        let reply = strings(self.run(call).await?)?;
        let Some((status, fields)) = reply.split_first() else {
            return Err(internal("empty update reply"));
        };
        Ok(match status.as_str() {
            "0" => None,
            "1" => Some(UpdateOutcome::Updated(record(fields)?)),
            "2" => Some(UpdateOutcome::VersionMismatch(record(fields)?)),
            "3" => Some(UpdateOutcome::TooLarge),
            other => return Err(internal(format!("update status {other}"))),
        })
    }

    async fn rotate(
        &self,
        tenant: &Tenant,
        old: &TokenRef,
        new: &TokenRef,
    ) -> Result<Option<SessionRecord>, StoreError> {
        if old.user_tag != new.user_tag {
            return Err(StoreError::internal(
                "a rotated token must keep its user tag",
            ));
        }
        let (old_key, new_key, index) = (
            session_key(tenant, old),
            session_key(tenant, new),
            session_index(tenant, &old.user_tag),
        );
        let mut call = SCRIPTS.rotate.call(&[&old_key, &new_key, &index], &[]);
        call.cmd.arg(&old.hash).arg(&new.hash);
        maybe_record(self.run(call).await?)
    }

    async fn revoke(&self, tenant: &Tenant, token: &TokenRef) -> Result<bool, StoreError> {
        let (key, index) = (
            session_key(tenant, token),
            session_index(tenant, &token.user_tag),
        );
        let mut call = SCRIPTS.revoke.call(&[&key, &index], &[]);
        call.cmd.arg(&token.hash);
        Ok(i64::from_redis_value(self.run(call).await?).map_err(internal)? == 1)
    }

    async fn list(&self, tenant: &Tenant, user_id: &str) -> Result<Vec<SessionRecord>, StoreError> {
        let reply = self.members(tenant, user_id, "list").await?;
        let sessions = Vec::<Vec<String>>::from_redis_value(reply).map_err(internal)?;
        sessions.iter().map(|fields| record(fields)).collect()
    }

    async fn revoke_user(
        &self,
        tenant: &Tenant,
        user_id: &str,
        except: Option<&str>,
    ) -> Result<u64, StoreError> {
        let user_tag = &user_tag(user_id);
        let index = session_index(tenant, user_tag);
        let mut call = SCRIPTS.revoke_user.call(&[&index], &[]);
        call.cmd
            .arg(user_id)
            .arg(session_prefix(tenant, user_tag))
            .arg(except.unwrap_or(""));
        u64::from_redis_value(self.run(call).await?).map_err(internal)
    }

    async fn count(&self, tenant: &Tenant, user_id: &str) -> Result<u64, StoreError> {
        let reply = self.members(tenant, user_id, "count").await?;
        u64::from_redis_value(reply).map_err(internal)
    }

    async fn issue_one_time(
        &self,
        tenant: &Tenant,
        hash: &str,
        purpose: &str,
        subject: &str,
        ttl_us: u64,
    ) -> Result<u64, StoreError> {
        let key = one_time_key(tenant, hash);
        let mut call = SCRIPTS.one_time_issue.call(&[&key], &[]);
        call.cmd.arg(purpose).arg(subject).arg(ttl_us);
        let expires = String::from_redis_value(self.run(call).await?).map_err(internal)?;
        number(&expires)
    }

    async fn consume_one_time(
        &self,
        tenant: &Tenant,
        hash: &str,
        purpose: &str,
    ) -> Result<Option<String>, StoreError> {
        let key = one_time_key(tenant, hash);
        let mut call = SCRIPTS.one_time_consume.call(&[&key], &[]);
        call.cmd.arg(purpose);
        Option::<String>::from_redis_value(self.run(call).await?).map_err(internal)
    }
}
