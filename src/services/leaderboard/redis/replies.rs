//! Reading the leaderboard scripts' replies into domain types.

use deadpool_redis::redis::{FromRedisValue, Value};

use crate::services::leaderboard::model::{Definition, Ranked, Record, prefix_len};
use crate::services::leaderboard::store::{Page, SubmitResult, Submitted, ranked_from};
use crate::store::StoreError;

pub(super) fn internal(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::internal(format!("leaderboard script reply ({what}): {e}"))
}

pub(super) fn int(v: &Value, what: &str) -> Result<i64, StoreError> {
    i64::from_redis_value(v.clone()).map_err(|e| internal(what, e))
}

pub(super) fn items(v: Value, what: &str) -> Result<Vec<Value>, StoreError> {
    Vec::<Value>::from_redis_value(v).map_err(|e| internal(what, e))
}

pub(super) fn strings(v: Value) -> Result<Vec<String>, StoreError> {
    Vec::<String>::from_redis_value(v).map_err(|e| internal("strings", e))
}

fn bytes(v: &Value, what: &str) -> Result<Vec<u8>, StoreError> {
    match v {
        Value::Nil => Ok(Vec::new()),
        v => Vec::<u8>::from_redis_value(v.clone()).map_err(|e| internal(what, e)),
    }
}

/// A period script's answer: `{status, items...}`.
pub(super) enum Reply {
    Ok(Vec<Value>),
    Gone,
    Stale,
    Other(String, Vec<Value>),
}

impl Reply {
    pub(super) fn of(v: Value, what: &str) -> Result<Self, StoreError> {
        let mut all = items(v, what)?.into_iter();
        let status = String::from_redis_value(all.next().unwrap_or(Value::Nil))
            .map_err(|e| internal(what, e))?;
        let rest: Vec<Value> = all.collect();
        Ok(match status.as_str() {
            "ok" => Reply::Ok(rest),
            "gone" => Reply::Gone,
            "stale" => Reply::Stale,
            _ => Reply::Other(status, rest),
        })
    }
}

/// `HMGET d j r g`: the definition with its revision and generation.
pub(super) fn definition(v: Value) -> Result<Option<Definition>, StoreError> {
    let fields = items(v, "definition")?;
    let [json, revision, generation] = fields.as_slice() else {
        return Err(internal("definition", "fields"));
    };
    if matches!(json, Value::Nil) {
        return Ok(None);
    }
    let json = bytes(json, "definition")?;
    let mut def: Definition =
        serde_json::from_slice(&json).map_err(|e| internal("definition", e))?;
    def.revision = int(revision, "revision")? as u64;
    def.generation = int(generation, "generation")? as u64;
    Ok(Some(def))
}

/// `score:subscore:seq:updated:submissions:` then the rest; the numbers
/// and the rest.
fn fields<const N: usize>(packed: &[u8], what: &str) -> Result<([i64; N], Vec<u8>), StoreError> {
    let mut nums = [0i64; N];
    let mut rest = packed;
    for num in nums.iter_mut() {
        let colon = rest
            .iter()
            .position(|&b| b == b':')
            .ok_or_else(|| internal(what, "short record"))?;
        *num = std::str::from_utf8(&rest[..colon])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| internal(what, "record number"))?;
        rest = &rest[colon + 1..];
    }
    Ok((nums, rest.to_vec()))
}

fn record(owner: &str, packed: &[u8]) -> Result<Record, StoreError> {
    let ([score, subscore, seq, updated, submissions], metadata) = fields::<5>(packed, "record")?;
    Ok(Record {
        owner_id: owner.to_owned(),
        score,
        subscore,
        seq: seq as u64,
        updated_ms: updated as u64,
        submissions: submissions as u64,
        metadata,
    })
}

/// `{rank, record}` of `records.lua`: rank 0 means no record.
pub(super) fn ranked_or_none(owner: &str, pair: &[Value]) -> Result<Option<Ranked>, StoreError> {
    let [rank, packed] = pair else {
        return Err(internal("records", "pair"));
    };
    let rank = int(rank, "rank")?;
    if rank <= 0 {
        return Ok(None);
    }
    Ok(Some(Ranked {
        record: record(owner, &bytes(packed, "record")?)?,
        rank: rank as u64,
    }))
}

/// `{first rank, member, record...}` of `top.lua` and `around.lua`; `limit`
/// (top) tells that one more than asked was read.
pub(super) fn page(
    items: Vec<Value>,
    def: &Definition,
    start: u64,
    limit: Option<usize>,
) -> Result<Page, StoreError> {
    let mut items = items.into_iter();
    let first = int(&items.next().unwrap_or(Value::Nil), "first")?.max(1) as u64;
    let rest: Vec<Value> = items.collect();
    let plen = prefix_len(def.tie_break);
    let mut members = Vec::with_capacity(rest.len() / 2);
    let mut records = Vec::with_capacity(rest.len() / 2);
    for pair in rest.chunks(2) {
        let [member, packed] = pair else {
            return Err(internal("page", "pair"));
        };
        let member = String::from_redis_value(member.clone()).map_err(|e| internal("page", e))?;
        let owner = member
            .get(plen..)
            .ok_or_else(|| internal("page", "member"))?
            .to_owned();
        records.push(record(&owner, &bytes(packed, "record")?)?);
        members.push(member);
    }
    let more = limit.is_some_and(|limit| records.len() > limit);
    if let Some(limit) = limit {
        records.truncate(limit);
        members.truncate(limit);
    }
    Ok(Page {
        records: ranked_from(first, records),
        next: if more { members.pop() } else { None },
        period: start.to_string(),
    })
}

/// `submit.lua`'s reply: the record, rank, previous rank, improved.
pub(super) fn submitted(
    items: Vec<Value>,
    owner: &str,
    replayed: bool,
) -> Result<Submitted, StoreError> {
    let packed = bytes(items.first().unwrap_or(&Value::Nil), "submit")?;
    let (
        [
            score,
            subscore,
            seq,
            updated,
            submissions,
            rank,
            previous,
            improved,
            start,
        ],
        metadata,
    ) = fields::<9>(&packed, "submit")?;
    Ok(Submitted::Done(SubmitResult {
        record: Ranked {
            record: Record {
                owner_id: owner.to_owned(),
                score,
                subscore,
                seq: seq as u64,
                updated_ms: updated as u64,
                submissions: submissions as u64,
                metadata,
            },
            rank: rank as u64,
        },
        previous_rank: previous as u64,
        improved: improved == 1,
        period: start.to_string(),
        replayed,
    }))
}
