//! Flag sets on Redis. A set's keys share the set's hash tag: its
//! definitions and versions (hashes), its meta (document, version, source
//! hash) and its audit stream, so each change is one script, on a cluster
//! too. Changes are announced on `dl:<tenant>:flc` (pub/sub, standalone).

use std::{
    collections::BTreeMap,
    sync::{Arc, LazyLock},
    time::Duration,
};

use async_trait::async_trait;
use deadpool_redis::redis::{self, FromRedisValue, Value};
use futures::StreamExt;
use tokio::sync::mpsc;

use super::registry::ChangeType;
use super::store::{Actor, AuditEntry, Store, StoredFlag, StoredSet, Write, WriteOutcome};
use super::{INDEX_SPACE, SET_SPACE};
use crate::keys::{self, Tenant};
use crate::store::StoreError;
use crate::store::redis::{NamedScript, Redis};

struct Scripts {
    write: NamedScript,
    import: NamedScript,
    load: NamedScript,
    get: NamedScript,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    write: NamedScript::new("flags.write", &[include_str!("lua/write.lua")]),
    import: NamedScript::new("flags.import", &[include_str!("lua/import.lua")]),
    load: NamedScript::read_only("flags.load", &[include_str!("lua/load.lua")]),
    get: NamedScript::read_only("flags.get", &[include_str!("lua/get.lua")]),
});

struct SetKeys {
    defs: String,
    vers: String,
    meta: String,
    audit: String,
}

fn set_keys(tenant: &Tenant, set: &str) -> SetKeys {
    let key = |part| keys::key(tenant, SET_SPACE, set, &[part]);
    SetKeys {
        defs: key("defs"),
        vers: key("vers"),
        meta: key("meta"),
        audit: key("audit"),
    }
}

fn index_key(tenant: &Tenant) -> String {
    keys::key(tenant, INDEX_SPACE, "sets", &[])
}

/// The channel a tenant's changes are announced on.
fn channel(tenant: &Tenant) -> String {
    format!("dl:{tenant}:flc")
}

fn internal(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::internal(format!("flags script reply ({what}): {e}"))
}

fn text(v: &Value) -> Result<String, StoreError> {
    String::from_redis_value(v.clone()).map_err(|e| internal("text", e))
}

fn number(v: &Value) -> Result<u64, StoreError> {
    let s = text(v)?;
    s.parse()
        .map_err(|e| internal("number", format!("{s:?}: {e}")))
}

pub struct RedisFlags {
    redis: Arc<Redis>,
    max_audit: usize,
}

impl RedisFlags {
    pub fn new(redis: Arc<Redis>, max_audit: usize) -> Self {
        Self { redis, max_audit }
    }

    async fn index(&self, tenant: &Tenant, set: &str) -> Result<(), StoreError> {
        let mut sadd = redis::cmd("SADD");
        sadd.arg(index_key(tenant)).arg(set);
        for reply in self.redis.exec("SADD", vec![sadd]).await? {
            reply.map_err(|e| StoreError::from_redis(&e))?;
        }
        Ok(())
    }
}

#[async_trait]
impl Store for RedisFlags {
    async fn versions(&self, tenant: &Tenant) -> Result<Vec<(String, u64)>, StoreError> {
        let mut members = redis::cmd("SMEMBERS");
        members.arg(index_key(tenant));
        let reply = self.redis.exec_untraced(vec![members]).await?.pop();
        let names = match reply {
            Some(Ok(v)) => Vec::<String>::from_redis_value(v).map_err(|e| internal("sets", e))?,
            Some(Err(e)) => return Err(StoreError::from_redis(&e)),
            None => Vec::new(),
        };
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let cmds = names
            .iter()
            .map(|name| {
                let mut hget = redis::cmd("HGET");
                hget.arg(set_keys(tenant, name).meta).arg("version");
                hget
            })
            .collect();
        let replies = self.redis.exec_untraced(cmds).await?;
        names
            .into_iter()
            .zip(replies)
            .map(|(name, reply)| {
                let reply = reply.map_err(|e| StoreError::from_redis(&e))?;
                let version = Option::<u64>::from_redis_value(reply)
                    .map_err(|e| internal("version", e))?
                    .unwrap_or(0);
                Ok((name, version))
            })
            .collect()
    }

    async fn load(&self, tenant: &Tenant, set: &str) -> Result<Option<StoredSet>, StoreError> {
        let k = set_keys(tenant, set);
        let reply = self
            .redis
            .eval(SCRIPTS.load.call(&[&k.defs, &k.vers, &k.meta], &[]))
            .await?;
        let items = Vec::<Value>::from_redis_value(reply).map_err(|e| internal("load", e))?;
        let [exists, meta, version, sha, flags] = items.as_slice() else {
            return Ok(None);
        };
        if number(exists)? == 0 {
            return Ok(None);
        }
        let flags =
            Vec::<String>::from_redis_value(flags.clone()).map_err(|e| internal("flags", e))?;
        let flags = flags
            .chunks(3)
            .map(|c| match c {
                [key, definition, version] => Ok(StoredFlag {
                    key: key.clone(),
                    definition: definition.clone(),
                    version: version.parse().map_err(|e| internal("flag version", e))?,
                }),
                _ => Err(internal("flags", "not in threes")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let sha = text(sha)?;
        Ok(Some(StoredSet {
            name: set.to_owned(),
            version: number(version)?,
            meta: text(meta)?,
            flags,
            source_sha: (!sha.is_empty()).then_some(sha),
        }))
    }

    async fn get(
        &self,
        tenant: &Tenant,
        set: &str,
        key: &str,
    ) -> Result<Option<StoredFlag>, StoreError> {
        let k = set_keys(tenant, set);
        let mut call = SCRIPTS.get.call(&[&k.defs, &k.vers], &[]);
        call.cmd.arg(key);
        let items = Vec::<String>::from_redis_value(self.redis.eval(call).await?)
            .map_err(|e| internal("get", e))?;
        Ok(match items.as_slice() {
            [definition, version] => Some(StoredFlag {
                key: key.to_owned(),
                definition: definition.clone(),
                version: version.parse().map_err(|e| internal("version", e))?,
            }),
            _ => None,
        })
    }

    async fn write(
        &self,
        tenant: &Tenant,
        set: &str,
        key: &str,
        write: Write,
        expected: Option<u64>,
        actor: Actor<'_>,
    ) -> Result<WriteOutcome, StoreError> {
        self.index(tenant, set).await?;
        let k = set_keys(tenant, set);
        let mut call = SCRIPTS
            .write
            .call(&[&k.defs, &k.vers, &k.meta, &k.audit], &[]);
        let definition = match &write {
            Write::Put(d) => d.as_str(),
            Write::Delete => "",
        };
        call.cmd
            .arg(key)
            .arg(definition)
            .arg(expected.map_or(-1, |v| v as i64))
            .arg(actor.action)
            .arg(actor.who)
            .arg(channel(tenant))
            .arg(set)
            .arg(self.max_audit);
        let (written, version, set_version): (i64, u64, u64) =
            FromRedisValue::from_redis_value(self.redis.eval(call).await?)
                .map_err(|e| internal("write", e))?;
        Ok(WriteOutcome {
            written: written == 1,
            version,
            set_version,
        })
    }

    async fn import(
        &self,
        tenant: &Tenant,
        set: &str,
        meta: &str,
        flags: &[(String, String)],
        replace: bool,
        source_sha: Option<&str>,
        actor: Actor<'_>,
    ) -> Result<(u64, Vec<(String, ChangeType)>), StoreError> {
        self.index(tenant, set).await?;
        let k = set_keys(tenant, set);
        let mut call = SCRIPTS
            .import
            .call(&[&k.defs, &k.vers, &k.meta, &k.audit], &[]);
        call.cmd
            .arg(meta)
            .arg(u8::from(replace))
            .arg(source_sha.unwrap_or(""))
            .arg(actor.who)
            .arg(channel(tenant))
            .arg(set)
            .arg(self.max_audit);
        for (key, definition) in flags {
            call.cmd.arg(key).arg(definition);
        }
        let items = Vec::<Value>::from_redis_value(self.redis.eval(call).await?)
            .map_err(|e| internal("import", e))?;
        let Some((version, rest)) = items.split_first() else {
            return Err(internal("import", "empty reply"));
        };
        let version = u64::from_redis_value(version.clone()).map_err(|e| internal("import", e))?;
        let changes = rest
            .chunks(2)
            .map(|c| {
                let key = text(&c[0])?;
                let kind = match c.get(1).map(|v| i64::from_redis_value(v.clone())) {
                    Some(Ok(1)) => ChangeType::Write,
                    Some(Ok(2)) => ChangeType::Update,
                    Some(Ok(3)) => ChangeType::Delete,
                    other => return Err(internal("import change", format!("{other:?}"))),
                };
                Ok((key, kind))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((version, changes))
    }

    async fn audit(
        &self,
        tenant: &Tenant,
        set: &str,
        limit: usize,
        before: Option<&str>,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let mut range = redis::cmd("XREVRANGE");
        range
            .arg(set_keys(tenant, set).audit)
            .arg(before.map_or("+".to_owned(), |id| format!("({id}")))
            .arg("-")
            .arg("COUNT")
            .arg(limit);
        let reply = self.redis.exec("XREVRANGE", vec![range]).await?.pop();
        let entries = match reply {
            Some(Ok(v)) => v,
            Some(Err(e)) => return Err(StoreError::from_redis(&e)),
            None => return Ok(Vec::new()),
        };
        let entries = Vec::<(String, BTreeMap<String, String>)>::from_redis_value(entries)
            .map_err(|e| internal("audit", e))?;
        Ok(entries
            .into_iter()
            .map(|(id, fields)| {
                let field = |name: &str| fields.get(name).cloned().unwrap_or_default();
                let at_ms: u64 = id
                    .split('-')
                    .next()
                    .and_then(|ms| ms.parse().ok())
                    .unwrap_or(0);
                AuditEntry {
                    at_us: at_ms * 1000,
                    key: field("key"),
                    action: field("action"),
                    before: field("before"),
                    after: field("after"),
                    actor: field("actor"),
                    version: field("version").parse().unwrap_or(0),
                    id,
                }
            })
            .collect())
    }

    fn notices(&self) -> Option<mpsc::Receiver<(String, String)>> {
        let client = self.redis.pubsub_client()?.clone();
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(async move {
            while !tx.is_closed() {
                if let Err(e) = listen(&client, &tx).await {
                    tracing::debug!(error = %e, "flag change notices: reconnecting");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        Some(rx)
    }
}

/// Forwards `(tenant, set)` of every change notice until the connection
/// breaks or nobody listens.
async fn listen(
    client: &redis::Client,
    tx: &mpsc::Sender<(String, String)>,
) -> Result<(), redis::RedisError> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.psubscribe("dl:*:flc").await?;
    let mut messages = pubsub.on_message();
    loop {
        let next = tokio::select! {
            next = messages.next() => next,
            () = tx.closed() => return Ok(()),
        };
        let Some(message) = next else { return Ok(()) };
        let channel = message.get_channel_name();
        let tenant = channel
            .strip_prefix("dl:")
            .and_then(|rest| rest.strip_suffix(":flc"))
            .unwrap_or_default()
            .to_owned();
        let set: String = message.get_payload().unwrap_or_default();
        if tx.send((tenant, set)).await.is_err() {
            return Ok(());
        }
    }
}
