//! What a leaderboard store does; the memory and Redis stores implement it.
//! Handlers pass board ids, owners and periods; stores name their keys and
//! decide the period of a write by their own clock (Redis: `TIME`).

use std::sync::Arc;

use async_trait::async_trait;

use super::model::{Definition, PeriodSpan, Ranked, Record, Submission};
use crate::keys::Tenant;
use crate::store::{Backend, StoreError};

/// Per-call bounds the store enforces atomically with the write.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_boards: usize,
    pub max_owners: u64,
    pub idempotency_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    Created(Definition),
    Exists,
    /// The tenant holds `leaderboard.max_boards` boards.
    Full,
}

/// Which period a read is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Current,
    /// A period by its start (its id).
    Started(u64),
}

/// What a Submit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    Done(SubmitResult),
    NoBoard,
    /// The period holds `leaderboard.max_owners` owners.
    Full,
    /// The result would pass ±2^53 − 1.
    OutOfRange,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitResult {
    pub record: Ranked,
    /// 0: no record before.
    pub previous_rank: u64,
    pub improved: bool,
    pub period: String,
    pub replayed: bool,
}

/// A page of the ranking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub records: Vec<Ranked>,
    /// The last record's order key, when more follow.
    pub next: Option<String>,
    pub period: String,
}

/// One period still kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeriodInfo {
    pub span: PeriodSpan,
    pub owners: u64,
}

#[async_trait]
pub trait Store: Send + Sync {
    async fn create(
        &self,
        tenant: &Tenant,
        def: Definition,
        limits: Limits,
    ) -> Result<Created, StoreError>;
    /// Replaces the definition (the handler checked what may change);
    /// `None` if there is no such board.
    async fn update(
        &self,
        tenant: &Tenant,
        def: Definition,
    ) -> Result<Option<Definition>, StoreError>;
    async fn get(&self, tenant: &Tenant, id: &str) -> Result<Option<Definition>, StoreError>;
    async fn delete(&self, tenant: &Tenant, id: &str) -> Result<bool, StoreError>;
    /// Up to `limit` + 1 boards after `after`, in id order.
    async fn list(
        &self,
        tenant: &Tenant,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Definition>, StoreError>;
    async fn submit(
        &self,
        tenant: &Tenant,
        board: &str,
        sub: &Submission,
        limits: Limits,
    ) -> Result<Submitted, StoreError>;
    /// Up to `limit` records after the order key `after`; `None` when the
    /// board does not exist.
    async fn top(
        &self,
        tenant: &Tenant,
        board: &str,
        which: Which,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Option<Page>, StoreError>;
    /// The owner's record with `above` and `below` around it (empty when
    /// it has none).
    async fn around(
        &self,
        tenant: &Tenant,
        board: &str,
        which: Which,
        owner: &str,
        above: usize,
        below: usize,
    ) -> Result<Option<Page>, StoreError>;
    /// Each owner's record with its rank, in order (none for owners
    /// without one), and how many owners the period holds.
    async fn records(
        &self,
        tenant: &Tenant,
        board: &str,
        which: Which,
        owners: &[String],
    ) -> Result<Option<(Vec<Option<Ranked>>, u64, String)>, StoreError>;
    async fn delete_record(
        &self,
        tenant: &Tenant,
        board: &str,
        which: Which,
        owner: &str,
    ) -> Result<Option<bool>, StoreError>;
    /// The periods still kept, newest first.
    async fn periods(
        &self,
        tenant: &Tenant,
        board: &str,
    ) -> Result<Option<Vec<PeriodInfo>>, StoreError>;
}

pub fn build(backend: &Backend) -> Arc<dyn Store> {
    match backend {
        Backend::Memory(memory) => super::memory::MemoryBoards::new(memory),
        Backend::Redis(redis) => super::redis::RedisBoards::new(redis.clone()),
    }
}

/// The records a page shows, ranked from the first one's rank.
pub fn ranked_from(first_rank: u64, records: Vec<Record>) -> Vec<Ranked> {
    records
        .into_iter()
        .enumerate()
        .map(|(i, record)| Ranked {
            record,
            rank: first_rank + i as u64,
        })
        .collect()
}
