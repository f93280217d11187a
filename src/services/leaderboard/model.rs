//! What a board is and how a record ranks: the definition, the operators,
//! and the order key every store sorts by.
//!
//! A record's **order key** is fixed-width text whose byte order is the
//! rank order: (score, subscore) each as a sign digit and 16 digits
//! (nines' complement for negatives, and the value negated first for a
//! descending board), then the tie-break (the board's write number, or its
//! nines' complement for `latest`, or nothing when owner ids break ties),
//! then the owner id. Text, not a float: every bit of a score is kept, and
//! no two owners ever compare equal. `lua/prelude.lua` computes the same
//! keys; the conformance suite proves the two agree.

use serde::{Deserialize, Serialize};

use crate::cron::CronSpec;

/// Scores and subscores stay within ±(2^53 − 1): exact in Lua's numbers.
pub const SCORE_LIMIT: i64 = (1 << 53) - 1;
/// Digits of a write number (the tie-break): 10^15 writes per period.
pub const SEQ_DIGITS: usize = 15;
/// Digits of one encoded score: a sign digit and 16.
const SCORE_DIGITS: usize = 17;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortOrder {
    Descending,
    Ascending,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operator {
    Best,
    Set,
    Increment,
    Decrement,
}

impl Operator {
    pub fn as_str(self) -> &'static str {
        match self {
            Operator::Best => "best",
            Operator::Set => "set",
            Operator::Increment => "incr",
            Operator::Decrement => "decr",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TieBreak {
    Earliest,
    Latest,
    OwnerId,
}

impl TieBreak {
    pub fn as_str(self) -> &'static str {
        match self {
            TieBreak::Earliest => "earliest",
            TieBreak::Latest => "latest",
            TieBreak::OwnerId => "owner",
        }
    }
}

/// A board's definition, as stored (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Definition {
    pub id: String,
    pub sort: SortOrder,
    pub operator: Operator,
    pub tie_break: TieBreak,
    /// Empty: the board never resets.
    pub reset_cron: String,
    pub time_zone: String,
    pub keep_periods: u32,
    pub decrement_floor: i64,
    pub metadata: Vec<u8>,
    pub created_ms: u64,
    /// Which incarnation of the id this board is: its keys carry it, so a
    /// board created again after a delete never sees the old records.
    #[serde(default)]
    pub generation: u64,
    /// Grows with every create and update: a store that cached the
    /// definition learns from a write that it changed.
    #[serde(default)]
    pub revision: u64,
}

impl Definition {
    /// The reset schedule; `None` for a board that never resets. The
    /// handler validated it, so a stored one that no longer parses is
    /// treated as never resetting.
    pub fn schedule(&self) -> Option<CronSpec> {
        if self.reset_cron.is_empty() {
            return None;
        }
        CronSpec::parse(&self.reset_cron, &self.time_zone).ok()
    }

    /// The period holding `now_ms`.
    pub fn period_at(&self, now_ms: u64) -> PeriodSpan {
        let Some(cron) = self.schedule() else {
            return PeriodSpan::FOREVER;
        };
        let end = cron.next_after(now_ms).unwrap_or(u64::MAX);
        let start = cron
            .last_at_or_before(now_ms)
            .unwrap_or(self.created_ms.min(now_ms));
        PeriodSpan {
            start_ms: start,
            end_ms: Some(end),
        }
    }

    /// When a period's records expire: `keep_periods` periods of its own
    /// length after it ends, and a minute's grace.
    pub fn expire_at_ms(&self, span: PeriodSpan) -> Option<u64> {
        let end = span.end_ms?;
        let len = end.saturating_sub(span.start_ms);
        Some(
            end.saturating_add(len.saturating_mul(u64::from(self.keep_periods)))
                .saturating_add(60_000),
        )
    }
}

/// Where a period starts and (for a resetting board) ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeriodSpan {
    pub start_ms: u64,
    pub end_ms: Option<u64>,
}

impl PeriodSpan {
    /// The one period of a board that never resets.
    pub const FOREVER: PeriodSpan = PeriodSpan {
        start_ms: 0,
        end_ms: None,
    };

    /// The period's id: its start, in milliseconds.
    pub fn id(&self) -> String {
        self.start_ms.to_string()
    }

    pub fn contains(&self, ms: u64) -> bool {
        ms >= self.start_ms && self.end_ms.is_none_or(|end| ms < end)
    }
}

/// A period named by a caller: its id parsed.
pub fn parse_period(id: &str) -> Option<u64> {
    if id.is_empty() || id.len() > 20 || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    id.parse().ok()
}

/// A record as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub owner_id: String,
    pub score: i64,
    pub subscore: i64,
    /// The board period's write number that made this score.
    pub seq: u64,
    pub updated_ms: u64,
    pub submissions: u64,
    pub metadata: Vec<u8>,
}

/// A record with its rank (1 is first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ranked {
    pub record: Record,
    pub rank: u64,
}

/// A validated submission.
#[derive(Debug, Clone)]
pub struct Submission {
    pub owner_id: String,
    pub score: i64,
    pub subscore: i64,
    pub metadata: Vec<u8>,
    /// `None`: the board's operator.
    pub operator: Option<Operator>,
    pub idempotency_key: String,
}

/// What a submission makes of a record, before its write number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The new (score, subscore).
    Changed(i64, i64),
    /// `best` with a score no better: the record stays.
    Kept,
    /// The result would pass ±[`SCORE_LIMIT`].
    OutOfRange,
}

/// Applies `op` to the record's `(score, subscore)` (none yet: `old` is
/// `None`).
pub fn apply(
    op: Operator,
    sort: SortOrder,
    floor: i64,
    old: Option<(i64, i64)>,
    score: i64,
    subscore: i64,
) -> Applied {
    let in_range = |v: i64| (-SCORE_LIMIT..=SCORE_LIMIT).contains(&v);
    let (new_score, new_sub) = match (op, old) {
        (Operator::Best, Some(old)) => {
            let better = match sort {
                SortOrder::Descending => (score, subscore) > old,
                SortOrder::Ascending => (score, subscore) < old,
            };
            if !better {
                return Applied::Kept;
            }
            (score, subscore)
        }
        (Operator::Best | Operator::Set, _) => (score, subscore),
        (Operator::Increment, old) => {
            let (s, ss) = old.unwrap_or((0, 0));
            (s.saturating_add(score), ss.saturating_add(subscore))
        }
        (Operator::Decrement, old) => {
            // Down to the floor, and never up: a record already below the
            // floor (an increment by a negative amount) stays where it is.
            let (base, ss) = old.unwrap_or((0, 0));
            let s = base.saturating_sub(score).max(floor).min(base);
            (s, ss.saturating_sub(subscore))
        }
    };
    if in_range(new_score) && in_range(new_sub) {
        Applied::Changed(new_score, new_sub)
    } else {
        Applied::OutOfRange
    }
}

/// A value in ascending byte order: a sign digit, then 16 digits (their
/// nines' complement below zero).
fn ascending(v: i64) -> String {
    let digits = format!("{:016}", v.unsigned_abs());
    if v >= 0 {
        format!("1{digits}")
    } else {
        let nines: String = digits
            .bytes()
            .map(|d| char::from(b'9' - (d - b'0')))
            .collect();
        format!("0{nines}")
    }
}

/// The order key of `owner`'s record on a board of `sort` and `tie`.
pub fn order_key(sort: SortOrder, tie: TieBreak, record: &Record) -> String {
    let enc = |v: i64| match sort {
        SortOrder::Ascending => ascending(v),
        SortOrder::Descending => ascending(-v),
    };
    let mut key = String::with_capacity(2 * SCORE_DIGITS + SEQ_DIGITS + record.owner_id.len());
    key.push_str(&enc(record.score));
    key.push_str(&enc(record.subscore));
    match tie {
        TieBreak::Earliest => key.push_str(&format!("{:015}", record.seq)),
        TieBreak::Latest => key.push_str(&format!("{:015}", 999_999_999_999_999 - record.seq)),
        TieBreak::OwnerId => {}
    }
    key.push_str(&record.owner_id);
    key
}

/// How many leading bytes of an order key precede the owner id.
pub fn prefix_len(tie: TieBreak) -> usize {
    2 * SCORE_DIGITS
        + match tie {
            TieBreak::OwnerId => 0,
            _ => SEQ_DIGITS,
        }
}

#[cfg(test)]
mod tests;
