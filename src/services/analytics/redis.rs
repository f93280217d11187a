//! Analytics on Redis. A metric's keys carry its name as hash tag, so a
//! metric's whole share of a `Track` is one script on one slot:
//!
//! * `…:an:{metric}:s:<res>:<start>` a bucket's series (a hash:
//!   `<combination>\x1e` + `c` count, `s` sum, `n` min, `x` max);
//! * `…:an:{metric}:u:<res>:<start>` its unique ids (a HyperLogLog);
//! * `…:an:{metric}:t:<res>:<start>:<label>` a top list (a sorted set);
//! * `…:an:{metric}:c` the combinations held, `:m` folded count and last
//!   write;
//! * `…:anx:{metrics}` the tenant's metrics (for listing and the cap).
//!
//! Every bucket key expires its retention after the bucket ends; the
//! bookkeeping keys the metric's longest bucket life after its last write.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use deadpool_redis::redis::{self, FromRedisValue, Value};

use super::model::{Agg, Combo, MetricBatch, Resolution};
use super::store::{MetricInfo, Store};
use super::{INDEX_SPACE, METRIC_SPACE};
use crate::keys::{self, Tenant};
use crate::store::StoreError;
use crate::store::redis::{NamedScript, Redis, ScriptCall};

struct Scripts {
    track: NamedScript,
    admit: NamedScript,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    track: NamedScript::new("analytics.track", &[include_str!("lua/track.lua")]),
    admit: NamedScript::new("analytics.admit", &[include_str!("lua/admit.lua")]),
});

/// The field separating a combination from its aggregate's letter.
const FIELD: char = '\u{1e}';

fn internal(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::internal(format!("analytics reply ({what}): {e}"))
}

fn prefix(tenant: &Tenant, metric: &str) -> String {
    keys::key(tenant, METRIC_SPACE, metric, &[])
}

fn bucket_key(prefix: &str, kind: &str, r: &Resolution, start: u64) -> String {
    format!("{prefix}:{kind}:{}:{start}", r.name)
}

fn index_key(tenant: &Tenant) -> String {
    keys::key(tenant, INDEX_SPACE, "metrics", &[])
}

pub struct RedisAnalytics {
    redis: Arc<Redis>,
}

impl RedisAnalytics {
    pub fn new(redis: Arc<Redis>) -> Arc<Self> {
        Arc::new(Self { redis })
    }

    async fn exec(
        &self,
        what: &'static str,
        cmds: Vec<redis::Cmd>,
    ) -> Result<Vec<Value>, StoreError> {
        self.redis
            .exec(what, cmds)
            .await?
            .into_iter()
            .map(|r| r.map_err(|e| StoreError::from_redis(&e)))
            .collect()
    }
}

/// The track script's call for one metric (see the header of
/// `lua/track.lua` for the order of its arguments).
fn track_call<'a>(tenant: &Tenant, batch: &MetricBatch) -> ScriptCall<'a> {
    let p = prefix(tenant, &batch.metric);
    let combos = format!("{p}:c");
    let meta = format!("{p}:m");
    let config = &batch.config;
    let mut call = SCRIPTS.track.call(&[&combos, &meta], &[]);
    let cmd = &mut call.cmd;
    cmd.arg(&p)
        .arg(config.max_combinations)
        .arg(config.keep_ms())
        .arg(config.top_size)
        .arg(config.resolutions.len());
    for r in &config.resolutions {
        cmd.arg(&r.name).arg(r.bucket_ms).arg(r.retention_ms);
    }
    cmd.arg(batch.slices.len());
    for slice in &batch.slices {
        cmd.arg(slice.at_ms.unwrap_or(0)).arg(slice.series.len());
        for (combo, (agg, events)) in &slice.series {
            cmd.arg(combo.as_str())
                .arg(*events)
                .arg(agg.count)
                .arg(agg.sum.to_string());
            match (agg.min, agg.max) {
                (Some(min), Some(max)) => cmd.arg(min.to_string()).arg(max.to_string()),
                _ => cmd.arg("").arg(""),
            };
        }
        cmd.arg(slice.uniques.len());
        for id in &slice.uniques {
            cmd.arg(id);
        }
        cmd.arg(slice.tops.len());
        for ((label, value), n) in &slice.tops {
            cmd.arg(label).arg(value).arg(*n);
        }
    }
    call
}

/// A bucket's `HGETALL`: combination → aggregate.
fn series(v: Value) -> Result<Vec<(Combo, Agg)>, StoreError> {
    let fields =
        BTreeMap::<String, String>::from_redis_value(v).map_err(|e| internal("series", e))?;
    let mut by_combo: BTreeMap<String, Agg> = BTreeMap::new();
    for (field, value) in fields {
        let Some((combo, letter)) = field.rsplit_once(FIELD) else {
            continue;
        };
        let agg = by_combo.entry(combo.to_owned()).or_default();
        let number = || {
            value
                .parse::<f64>()
                .map_err(|e| internal("series value", e))
        };
        match letter {
            "c" => agg.count = value.parse().map_err(|e| internal("series count", e))?,
            "s" => agg.sum = number()?,
            "n" => agg.min = Some(number()?),
            "x" => agg.max = Some(number()?),
            _ => {}
        }
    }
    Ok(by_combo
        .into_iter()
        .map(|(c, a)| (Combo::stored(c), a))
        .collect())
}

#[async_trait]
impl Store for RedisAnalytics {
    async fn admit(
        &self,
        tenant: &Tenant,
        metrics: &[&str],
        keep_ms: u64,
        max: usize,
    ) -> Result<Vec<String>, StoreError> {
        let index = index_key(tenant);
        let mut call = SCRIPTS.admit.call(&[&index], &[keep_ms, max as u64]);
        for m in metrics {
            call.cmd.arg(*m);
        }
        Vec::<String>::from_redis_value(self.redis.eval(call).await?)
            .map_err(|e| internal("admit", e))
    }

    async fn track(&self, tenant: &Tenant, batches: &[MetricBatch]) -> Result<u64, StoreError> {
        let calls: Vec<ScriptCall<'_>> = batches.iter().map(|b| track_call(tenant, b)).collect();
        let mut folded = 0;
        for v in self.redis.eval_batch(&calls).await? {
            folded += u64::from_redis_value(v).map_err(|e| internal("track", e))?;
        }
        Ok(folded)
    }

    async fn series(
        &self,
        tenant: &Tenant,
        metric: &str,
        resolution: &Resolution,
        starts: &[u64],
    ) -> Result<Vec<Vec<(Combo, Agg)>>, StoreError> {
        let p = prefix(tenant, metric);
        let cmds = starts
            .iter()
            .map(|&s| {
                let mut cmd = redis::cmd("HGETALL");
                cmd.arg(bucket_key(&p, "s", resolution, s));
                cmd
            })
            .collect();
        self.exec("HGETALL analytics", cmds)
            .await?
            .into_iter()
            .map(series)
            .collect()
    }

    async fn unique(
        &self,
        tenant: &Tenant,
        metric: &str,
        resolution: &Resolution,
        starts: &[u64],
    ) -> Result<u64, StoreError> {
        let p = prefix(tenant, metric);
        let mut cmd = redis::cmd("PFCOUNT");
        for &s in starts {
            cmd.arg(bucket_key(&p, "u", resolution, s));
        }
        let v = self.exec("PFCOUNT analytics", vec![cmd]).await?;
        u64::from_redis_value(v.into_iter().next().unwrap_or(Value::Nil))
            .map_err(|e| internal("unique", e))
    }

    async fn top(
        &self,
        tenant: &Tenant,
        metric: &str,
        label: &str,
        resolution: &Resolution,
        starts: &[u64],
    ) -> Result<BTreeMap<String, i64>, StoreError> {
        let p = prefix(tenant, metric);
        let mut cmd = redis::cmd("ZUNION");
        cmd.arg(starts.len());
        for &s in starts {
            cmd.arg(format!("{}:{label}", bucket_key(&p, "t", resolution, s)));
        }
        cmd.arg("WITHSCORES");
        let v = self.exec("ZUNION analytics", vec![cmd]).await?;
        let pairs =
            Vec::<(String, f64)>::from_redis_value(v.into_iter().next().unwrap_or(Value::Nil))
                .map_err(|e| internal("top", e))?;
        Ok(pairs
            .into_iter()
            .map(|(m, n)| (m, n.round() as i64))
            .collect())
    }

    async fn metrics(&self, tenant: &Tenant) -> Result<Vec<MetricInfo>, StoreError> {
        let mut cmd = redis::cmd("ZRANGE");
        cmd.arg(index_key(tenant)).arg(0).arg(-1).arg("WITHSCORES");
        let v = self.exec("ZRANGE analytics", vec![cmd]).await?;
        let mut names =
            Vec::<(String, f64)>::from_redis_value(v.into_iter().next().unwrap_or(Value::Nil))
                .map_err(|e| internal("metrics", e))?;
        names.sort_by(|a, b| a.0.cmp(&b.0));
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmds = Vec::with_capacity(names.len() * 2);
        for (name, _) in &names {
            let p = prefix(tenant, name);
            let mut card = redis::cmd("ZCARD");
            card.arg(format!("{p}:c"));
            let mut meta = redis::cmd("HMGET");
            meta.arg(format!("{p}:m")).arg("folded").arg("last");
            cmds.push(card);
            cmds.push(meta);
        }
        let replies = self.exec("ZCARD analytics", cmds).await?;
        let mut out = Vec::with_capacity(names.len());
        for ((name, admitted), pair) in names.into_iter().zip(replies.chunks(2)) {
            let combinations =
                u64::from_redis_value(pair[0].clone()).map_err(|e| internal("combinations", e))?;
            let (folded, last) = <(Option<u64>, Option<u64>)>::from_redis_value(pair[1].clone())
                .map_err(|e| internal("meta", e))?;
            out.push(MetricInfo {
                name,
                last_ms: last.unwrap_or(admitted as u64),
                combinations,
                folded: folded.unwrap_or(0),
            });
        }
        Ok(out)
    }
}
