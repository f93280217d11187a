//! The in-process topic store: a stream per topic as Redis keeps one, with
//! the same trimming, ids and consumer-group rules.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use async_trait::async_trait;

use super::store::Store;
use super::{GroupRead, GroupStats, Msg, MsgId, NewMsg, Read, Retention, Stats};
use crate::keys::Tenant;
use crate::store::StoreError;
use crate::store::memory::{Expiring, Memory, PerTenant};

#[derive(Default)]
struct Group {
    last_delivered: MsgId,
    /// id → (consumer, delivered at ms, deliveries).
    pending: BTreeMap<MsgId, (String, u64, u32)>,
    consumers: HashSet<String>,
}

#[derive(Default)]
struct Topic {
    entries: VecDeque<Msg>,
    last: MsgId,
    max_deleted: MsgId,
    groups: BTreeMap<String, Group>,
    expires_ms: u64,
}

impl Topic {
    fn trim(&mut self, retention: Retention, now: u64) {
        let oldest = now.saturating_sub(retention.max_age_ms);
        while let Some(front) = self.entries.front() {
            if self.entries.len() as u64 > retention.max_len || front.id.0 < oldest {
                self.max_deleted = self.max_deleted.max(front.id);
                self.entries.pop_front();
            } else {
                break;
            }
        }
    }

    fn after(&self, after: MsgId) -> impl Iterator<Item = &Msg> {
        let start = self.entries.partition_point(|m| m.id <= after);
        self.entries.range(start..)
    }
}

#[derive(Default)]
struct Topics(HashMap<String, Topic>);

impl Expiring for Topics {
    fn sweep(&mut self, now_us: u64) {
        let now = now_us / 1000;
        self.0.retain(|_, t| t.expires_ms > now);
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

pub struct MemoryTopics {
    memory: Arc<Memory>,
    topics: Arc<PerTenant<Topics>>,
}

impl MemoryTopics {
    pub fn new(memory: &Arc<Memory>) -> Arc<Self> {
        Arc::new(Self {
            memory: memory.clone(),
            topics: memory.tenant_state(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.memory.now_us() / 1000
    }

    /// Runs `f` on the live topic, if there is one.
    fn with<R>(&self, tenant: &Tenant, topic: &str, f: impl FnOnce(&mut Topic) -> R) -> Option<R> {
        let now = self.now_ms();
        self.topics.with(tenant, |t| {
            let live = t.0.get_mut(topic).filter(|t| t.expires_ms > now)?;
            Some(f(live))
        })
    }
}

#[async_trait]
impl Store for MemoryTopics {
    async fn publish(
        &self,
        tenant: &Tenant,
        topic: &str,
        msgs: &[NewMsg],
        retention: Retention,
    ) -> Result<Vec<MsgId>, StoreError> {
        let now = self.now_ms();
        Ok(self.topics.with(tenant, |t| {
            let entry = t.0.entry(topic.to_owned()).or_default();
            if entry.expires_ms <= now {
                *entry = Topic::default();
            }
            let ids = msgs
                .iter()
                .map(|m| {
                    let id = if now > entry.last.0 {
                        MsgId(now, 0)
                    } else {
                        MsgId(entry.last.0, entry.last.1 + 1)
                    };
                    entry.last = id;
                    entry.entries.push_back(Msg {
                        id,
                        payload: m.payload.clone(),
                        headers: m.headers.clone(),
                        deliveries: 0,
                    });
                    id
                })
                .collect();
            entry.trim(retention, now);
            entry.expires_ms = now + retention.max_age_ms;
            ids
        }))
    }

    async fn read(
        &self,
        tenant: &Tenant,
        topic: &str,
        after: MsgId,
        count: usize,
    ) -> Result<Read, StoreError> {
        Ok(self
            .with(tenant, topic, |t| Read {
                messages: t.after(after).take(count).cloned().collect(),
                max_deleted: t.max_deleted,
                first_kept: t.entries.front().map(|m| m.id),
            })
            .unwrap_or_default())
    }

    async fn last_id(&self, tenant: &Tenant, topic: &str) -> Result<MsgId, StoreError> {
        Ok(self
            .with(tenant, topic, |t| {
                t.entries.back().map_or(MsgId::ZERO, |m| m.id)
            })
            .unwrap_or(MsgId::ZERO))
    }

    async fn group_read(
        &self,
        tenant: &Tenant,
        topic: &str,
        read: &GroupRead,
        retention: Retention,
    ) -> Result<Vec<Msg>, StoreError> {
        let now = self.now_ms();
        Ok(self.topics.with(tenant, |t| {
            let entry = t.0.entry(topic.to_owned()).or_default();
            if entry.expires_ms <= now {
                *entry = Topic::default();
                entry.expires_ms = now + retention.max_age_ms;
            }
            let topic = entry;
            let group = topic
                .groups
                .entry(read.group.clone())
                .or_insert_with(|| Group {
                    last_delivered: read.start,
                    ..Default::default()
                });
            group.consumers.insert(read.consumer.clone());
            let mut out = Vec::new();
            // Pending messages idle too long move to this member (a
            // trimmed one is dropped from the pending list, as XAUTOCLAIM
            // does).
            let idle: Vec<MsgId> = group
                .pending
                .iter()
                .filter(|(_, (_, at, _))| now.saturating_sub(*at) >= read.claim_idle_ms)
                .map(|(id, _)| *id)
                .take(read.count)
                .collect();
            for id in idle {
                let Some(m) = topic
                    .entries
                    .binary_search_by(|m| m.id.cmp(&id))
                    .ok()
                    .and_then(|i| topic.entries.get(i))
                else {
                    group.pending.remove(&id);
                    continue;
                };
                if let Some(p) = group.pending.get_mut(&id) {
                    *p = (read.consumer.clone(), now, p.2 + 1);
                    out.push(Msg {
                        deliveries: p.2,
                        ..m.clone()
                    });
                }
            }
            // `count` bounds what this member holds unacknowledged.
            let held = group
                .pending
                .values()
                .filter(|(c, _, _)| *c == read.consumer)
                .count()
                .max(out.len());
            let start = topic
                .entries
                .partition_point(|m| m.id <= group.last_delivered);
            for m in topic
                .entries
                .range(start..)
                .take(read.count.saturating_sub(held))
            {
                group.pending.insert(m.id, (read.consumer.clone(), now, 1));
                group.last_delivered = m.id;
                out.push(Msg {
                    deliveries: 1,
                    ..m.clone()
                });
            }
            out
        }))
    }

    async fn ack(
        &self,
        tenant: &Tenant,
        topic: &str,
        group: &str,
        ids: &[MsgId],
    ) -> Result<u64, StoreError> {
        Ok(self
            .with(tenant, topic, |t| {
                let Some(g) = t.groups.get_mut(group) else {
                    return 0;
                };
                ids.iter()
                    .filter(|id| g.pending.remove(id).is_some())
                    .count() as u64
            })
            .unwrap_or(0))
    }

    async fn stats(&self, tenant: &Tenant, topic: &str) -> Result<Option<Stats>, StoreError> {
        Ok(self.with(tenant, topic, |t| Stats {
            length: t.entries.len() as u64,
            first: t.entries.front().map(|m| m.id),
            last: t.entries.back().map(|m| m.id),
            groups: t
                .groups
                .iter()
                .map(|(name, g)| GroupStats {
                    name: name.clone(),
                    pending: g.pending.len() as u64,
                    consumers: g.consumers.len() as u64,
                    last_delivered: g.last_delivered,
                })
                .collect(),
        }))
    }

    async fn delete(&self, tenant: &Tenant, topic: &str) -> Result<bool, StoreError> {
        let now = self.now_ms();
        Ok(self.topics.with(tenant, |t| {
            t.0.remove(topic).is_some_and(|t| t.expires_ms > now)
        }))
    }
}
