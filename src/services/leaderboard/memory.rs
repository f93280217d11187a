//! The in-process leaderboard store: the same rules as the Lua scripts, in
//! Rust, on ordered maps keyed by the same order keys.

mod submit;

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use async_trait::async_trait;

use super::model::{Definition, Ranked, Record, Submission, order_key};
use super::store::{
    Created, Limits, Page, PeriodInfo, Store, SubmitResult, Submitted, Which, ranked_from,
};
use crate::keys::Tenant;
use crate::store::StoreError;
use crate::store::memory::{Expiring, Memory, PerTenant};

#[derive(Default)]
struct Period {
    /// Order key → owner.
    order: BTreeMap<String, String>,
    records: HashMap<String, Record>,
    seq: u64,
    expires_ms: Option<u64>,
}

impl Period {
    fn key(&self, def: &Definition, owner: &str) -> Option<String> {
        let r = self.records.get(owner)?;
        Some(order_key(def.sort, def.tie_break, r))
    }

    /// 1-based rank of an order key in the period.
    fn rank(&self, key: &str) -> u64 {
        self.order
            .range::<str, _>((Bound::Unbounded, Bound::Excluded(key)))
            .count() as u64
            + 1
    }

    fn ranked(&self, key: &str, owner: &str) -> Option<Ranked> {
        Some(Ranked {
            record: self.records.get(owner)?.clone(),
            rank: self.rank(key),
        })
    }
}

type PeriodKey = (String, u64, u64);
type IdemKey = (String, u64, String, String);

#[derive(Default)]
struct Boards {
    defs: BTreeMap<String, Definition>,
    /// Last revision given per id: kept across deletes, so revisions (and
    /// generations) only grow.
    revisions: HashMap<String, u64>,
    periods: HashMap<PeriodKey, Period>,
    idem: HashMap<IdemKey, (SubmitResult, u64)>,
}

impl Expiring for Boards {
    fn sweep(&mut self, now_us: u64) {
        let now = now_us / 1000;
        self.periods
            .retain(|_, p| p.expires_ms.is_none_or(|at| at > now));
        self.idem.retain(|_, (_, at)| *at > now);
    }

    fn is_empty(&self) -> bool {
        self.defs.is_empty() && self.periods.is_empty() && self.idem.is_empty()
    }
}

impl Boards {
    fn next_revision(&mut self, id: &str) -> u64 {
        let r = self.revisions.entry(id.to_owned()).or_default();
        *r += 1;
        *r
    }

    fn period(&self, def: &Definition, start: u64, now_ms: u64) -> Option<&Period> {
        let p = self.periods.get(&(def.id.clone(), def.generation, start))?;
        p.expires_ms.is_none_or(|at| at > now_ms).then_some(p)
    }
}

pub struct MemoryBoards {
    memory: Arc<Memory>,
    boards: Arc<PerTenant<Boards>>,
}

impl MemoryBoards {
    pub fn new(memory: &Arc<Memory>) -> Arc<Self> {
        Arc::new(Self {
            memory: memory.clone(),
            boards: memory.tenant_state(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.memory.now_us() / 1000
    }

    fn start(def: &Definition, which: Which, now_ms: u64) -> u64 {
        match which {
            Which::Current => def.period_at(now_ms).start_ms,
            Which::Started(start) => start,
        }
    }

    /// Runs `f` on the board's period (an empty one when it has none).
    fn read<R>(
        &self,
        tenant: &Tenant,
        board: &str,
        which: Which,
        f: impl FnOnce(&Definition, &Period, String) -> R,
    ) -> Option<R> {
        let now = self.now_ms();
        self.boards.with(tenant, |b| {
            let def = b.defs.get(board)?;
            let start = Self::start(def, which, now);
            let empty = Period::default();
            let period = b.period(def, start, now).unwrap_or(&empty);
            Some(f(def, period, start.to_string()))
        })
    }
}

#[async_trait]
impl Store for MemoryBoards {
    async fn create(
        &self,
        tenant: &Tenant,
        mut def: Definition,
        limits: Limits,
    ) -> Result<Created, StoreError> {
        Ok(self.boards.with(tenant, |b| {
            if b.defs.contains_key(&def.id) {
                return Created::Exists;
            }
            if b.defs.len() >= limits.max_boards {
                return Created::Full;
            }
            def.revision = b.next_revision(&def.id);
            def.generation = def.revision;
            b.defs.insert(def.id.clone(), def.clone());
            Created::Created(def)
        }))
    }

    async fn update(
        &self,
        tenant: &Tenant,
        mut def: Definition,
    ) -> Result<Option<Definition>, StoreError> {
        Ok(self.boards.with(tenant, |b| {
            let old = b.defs.get(&def.id)?;
            def.generation = old.generation;
            def.created_ms = old.created_ms;
            def.revision = b.next_revision(&def.id);
            b.defs.insert(def.id.clone(), def.clone());
            Some(def)
        }))
    }

    async fn get(&self, tenant: &Tenant, id: &str) -> Result<Option<Definition>, StoreError> {
        Ok(self.boards.with(tenant, |b| b.defs.get(id).cloned()))
    }

    async fn delete(&self, tenant: &Tenant, id: &str) -> Result<bool, StoreError> {
        Ok(self.boards.with(tenant, |b| {
            let Some(def) = b.defs.remove(id) else {
                return false;
            };
            b.periods.retain(|(board, generation, _), _| {
                !(board == id && *generation == def.generation)
            });
            true
        }))
    }

    async fn list(
        &self,
        tenant: &Tenant,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Definition>, StoreError> {
        let from = after.map_or(Bound::Unbounded, |a| Bound::Excluded(a.to_owned()));
        Ok(self.boards.with(tenant, |b| {
            b.defs
                .range((from, Bound::Unbounded))
                .take(limit + 1)
                .map(|(_, d)| d.clone())
                .collect()
        }))
    }

    async fn submit(
        &self,
        tenant: &Tenant,
        board: &str,
        sub: &Submission,
        limits: Limits,
    ) -> Result<Submitted, StoreError> {
        let now = self.now_ms();
        Ok(self
            .boards
            .with(tenant, |b| submit::submit(b, now, board, sub, limits)))
    }

    async fn top(
        &self,
        tenant: &Tenant,
        board: &str,
        which: Which,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Option<Page>, StoreError> {
        Ok(self.read(tenant, board, which, |_, p, period| {
            let from = after.map_or(Bound::Unbounded, |a| Bound::Excluded(a.to_owned()));
            let mut keys: Vec<(&String, &String)> = p
                .order
                .range((from, Bound::Unbounded))
                .take(limit + 1)
                .collect();
            let more = keys.len() > limit;
            keys.truncate(limit);
            let first = keys.first().map_or(1, |(k, _)| p.rank(k));
            let next = more
                .then(|| keys.last().map(|(k, _)| (*k).clone()))
                .flatten();
            let records = keys
                .iter()
                .filter_map(|(_, o)| p.records.get(*o).cloned())
                .collect();
            Page {
                records: ranked_from(first, records),
                next,
                period,
            }
        }))
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
        Ok(self.read(tenant, board, which, |def, p, period| {
            let mut page = Page {
                records: Vec::new(),
                next: None,
                period,
            };
            let Some(key) = p.key(def, owner) else {
                return page;
            };
            let up: Vec<&String> = p
                .order
                .range::<str, _>((Bound::Unbounded, Bound::Excluded(key.as_str())))
                .rev()
                .take(above)
                .map(|(_, o)| o)
                .collect();
            let down = p
                .order
                .range::<str, _>((Bound::Included(key.as_str()), Bound::Unbounded))
                .take(below + 1)
                .map(|(_, o)| o);
            let owners: Vec<&String> = up.into_iter().rev().chain(down).collect();
            let first = p.rank(&key) - owners.iter().position(|o| *o == owner).unwrap_or(0) as u64;
            let records = owners
                .iter()
                .filter_map(|o| p.records.get(*o).cloned())
                .collect();
            page.records = ranked_from(first, records);
            page
        }))
    }

    async fn records(
        &self,
        tenant: &Tenant,
        board: &str,
        which: Which,
        owners: &[String],
    ) -> Result<Option<(Vec<Option<Ranked>>, u64, String)>, StoreError> {
        Ok(self.read(tenant, board, which, |def, p, period| {
            let found = owners
                .iter()
                .map(|o| p.key(def, o).and_then(|k| p.ranked(&k, o)))
                .collect();
            (found, p.records.len() as u64, period)
        }))
    }

    async fn delete_record(
        &self,
        tenant: &Tenant,
        board: &str,
        which: Which,
        owner: &str,
    ) -> Result<Option<bool>, StoreError> {
        let now = self.now_ms();
        Ok(self.boards.with(tenant, |b| {
            let def = b.defs.get(board)?.clone();
            let start = Self::start(&def, which, now);
            let Some(p) = b.periods.get_mut(&(def.id.clone(), def.generation, start)) else {
                return Some(false);
            };
            let Some(key) = p.key(&def, owner) else {
                return Some(false);
            };
            p.order.remove(&key);
            p.records.remove(owner);
            Some(true)
        }))
    }

    async fn periods(
        &self,
        tenant: &Tenant,
        board: &str,
    ) -> Result<Option<Vec<PeriodInfo>>, StoreError> {
        let now = self.now_ms();
        Ok(self.boards.with(tenant, |b| {
            let def = b.defs.get(board)?;
            let current = def.period_at(now);
            let mut found: Vec<PeriodInfo> = b
                .periods
                .iter()
                .filter(|((id, generation, start), p)| {
                    id == board
                        && *generation == def.generation
                        && *start != current.start_ms
                        && !p.records.is_empty()
                        && p.expires_ms.is_none_or(|at| at > now)
                })
                .map(|((_, _, start), p)| PeriodInfo {
                    span: def.period_at(*start),
                    owners: p.records.len() as u64,
                })
                .collect();
            found.sort_by_key(|p| std::cmp::Reverse(p.span.start_ms));
            found.truncate(def.keep_periods as usize);
            let owners = b
                .period(def, current.start_ms, now)
                .map_or(0, |p| p.records.len() as u64);
            found.insert(
                0,
                PeriodInfo {
                    span: current,
                    owners,
                },
            );
            Some(found)
        }))
    }
}
