//! Leaderboard wire ↔ domain: definitions (validated), records, periods,
//! cursors.

use crate::cron::CronSpec;
use crate::grpc::convert::timestamp_ms_out;
use crate::proto::datalayer::leaderboard::v1 as pb;
use crate::services::leaderboard::model::{
    Definition, Operator, PeriodSpan, Ranked, SortOrder, TieBreak,
};
use crate::services::leaderboard::settings::{self, Settings};
use crate::services::leaderboard::store::PeriodInfo;
use crate::validate::{self, FieldViolation, Invalid};

fn sort_in(raw: i32, field: &str) -> Result<Option<SortOrder>, FieldViolation> {
    let known = pb::SortOrder::try_from(raw).ok();
    Ok(match validate::known(known, raw, field, "sort order")? {
        pb::SortOrder::Unspecified => None,
        pb::SortOrder::Descending => Some(SortOrder::Descending),
        pb::SortOrder::Ascending => Some(SortOrder::Ascending),
    })
}

/// An operator; `None` when unspecified.
pub fn operator(raw: i32, field: &str) -> Result<Option<Operator>, FieldViolation> {
    let known = pb::Operator::try_from(raw).ok();
    Ok(match validate::known(known, raw, field, "operator")? {
        pb::Operator::Unspecified => None,
        pb::Operator::Best => Some(Operator::Best),
        pb::Operator::Set => Some(Operator::Set),
        pb::Operator::Increment => Some(Operator::Increment),
        pb::Operator::Decrement => Some(Operator::Decrement),
    })
}

fn tie_in(raw: i32, field: &str) -> Result<Option<TieBreak>, FieldViolation> {
    let known = pb::TieBreak::try_from(raw).ok();
    Ok(match validate::known(known, raw, field, "tie-break")? {
        pb::TieBreak::Unspecified => None,
        pb::TieBreak::Earliest => Some(TieBreak::Earliest),
        pb::TieBreak::Latest => Some(TieBreak::Latest),
        pb::TieBreak::OwnerId => Some(TieBreak::OwnerId),
    })
}

fn schedule(cron: &str, time_zone: &str) -> Result<(), Invalid> {
    if cron.is_empty() {
        if !time_zone.is_empty() {
            return Err(Invalid::one(
                "time_zone",
                "is only meaningful with a reset_cron",
            ));
        }
        return Ok(());
    }
    CronSpec::parse(cron, time_zone)
        .map(|_| ())
        .map_err(|problems| {
            let field = |f: &str| {
                if f == "cron" {
                    "reset_cron"
                } else {
                    "time_zone"
                }
                .to_owned()
            };
            Invalid(
                problems
                    .into_iter()
                    .map(|(f, why)| FieldViolation::new(field(f), why))
                    .collect(),
            )
        })
}

/// Cannot differ from the stored definition `old`.
fn fixed<T: PartialEq>(
    value: Option<T>,
    old: Option<T>,
    field: &str,
) -> Result<(), FieldViolation> {
    match (value, old) {
        (Some(v), Some(o)) if v != o => Err(FieldViolation::new(
            field,
            "cannot change after creation: it would re-rank the records already written; create another board",
        )),
        _ => Ok(()),
    }
}

/// A board's definition from the wire; with `old`, an update of it (only
/// metadata, schedule, retention and floor may change, and a board cannot
/// start or stop resetting).
pub fn definition(
    s: &Settings,
    board: Option<&pb::Leaderboard>,
    old: Option<&Definition>,
) -> Result<Definition, Invalid> {
    let Some(b) = board else {
        return Err(Invalid::one("leaderboard", "is required"));
    };
    let resets = |def: &Definition| !def.reset_cron.is_empty();
    let switch = match old {
        Some(old) if resets(old) == b.reset_cron.is_empty() => Err(FieldViolation::new(
            "reset_cron",
            "a board cannot start or stop resetting after creation; create another board",
        )),
        _ => Ok(()),
    };
    let (_, sort, op, tie, _, keep, floor, _, _, _, _) = validate::all((
        validate::name(&b.id, "id"),
        sort_in(b.sort_order, "sort_order"),
        operator(b.operator, "operator"),
        tie_in(b.tie_break, "tie_break"),
        schedule(&b.reset_cron, &b.time_zone),
        s.keep_periods(b.keep_periods, "keep_periods"),
        settings::score(b.decrement_floor, "decrement_floor"),
        s.metadata(&b.metadata, "metadata"),
        switch,
        fixed(
            sort_in(b.sort_order, "sort_order").ok().flatten(),
            old.map(|o| o.sort),
            "sort_order",
        ),
        validate::all((
            fixed(
                operator(b.operator, "operator").ok().flatten(),
                old.map(|o| o.operator),
                "operator",
            ),
            fixed(
                tie_in(b.tie_break, "tie_break").ok().flatten(),
                old.map(|o| o.tie_break),
                "tie_break",
            ),
        )),
    ))
    .map_err(|e| e.under("leaderboard"))?;
    Ok(Definition {
        id: b.id.clone(),
        sort: sort
            .or(old.map(|o| o.sort))
            .unwrap_or(SortOrder::Descending),
        operator: op.or(old.map(|o| o.operator)).unwrap_or(Operator::Best),
        tie_break: tie
            .or(old.map(|o| o.tie_break))
            .unwrap_or(TieBreak::Earliest),
        reset_cron: b.reset_cron.clone(),
        time_zone: b.time_zone.clone(),
        keep_periods: keep,
        decrement_floor: floor,
        metadata: b.metadata.to_vec(),
        created_ms: old.map_or_else(now_ms, |o| o.created_ms),
        generation: old.map_or(0, |o| o.generation),
        revision: old.map_or(0, |o| o.revision),
    })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub fn board(def: &Definition) -> pb::Leaderboard {
    pb::Leaderboard {
        id: def.id.clone(),
        sort_order: match def.sort {
            SortOrder::Descending => pb::SortOrder::Descending,
            SortOrder::Ascending => pb::SortOrder::Ascending,
        } as i32,
        operator: match def.operator {
            Operator::Best => pb::Operator::Best,
            Operator::Set => pb::Operator::Set,
            Operator::Increment => pb::Operator::Increment,
            Operator::Decrement => pb::Operator::Decrement,
        } as i32,
        tie_break: match def.tie_break {
            TieBreak::Earliest => pb::TieBreak::Earliest,
            TieBreak::Latest => pb::TieBreak::Latest,
            TieBreak::OwnerId => pb::TieBreak::OwnerId,
        } as i32,
        reset_cron: def.reset_cron.clone(),
        time_zone: def.time_zone.clone(),
        keep_periods: def.keep_periods,
        decrement_floor: def.decrement_floor,
        metadata: def.metadata.clone(),
        create_time: Some(timestamp_ms_out(def.created_ms)),
    }
}

pub fn record(r: &Ranked) -> pb::Record {
    pb::Record {
        owner_id: r.record.owner_id.clone(),
        score: r.record.score,
        subscore: r.record.subscore,
        rank: r.rank,
        metadata: r.record.metadata.clone(),
        update_time: Some(timestamp_ms_out(r.record.updated_ms)),
        submissions: r.record.submissions,
    }
}

pub fn period(p: &PeriodInfo) -> pb::Period {
    let PeriodSpan { start_ms, end_ms } = p.span;
    pb::Period {
        id: p.span.id(),
        start_time: Some(timestamp_ms_out(start_ms)),
        end_time: end_ms.map(timestamp_ms_out),
        owners: p.owners,
    }
}

/// A cursor is the hex of the last record's order key.
pub fn cursor_out(order_key: &str) -> String {
    hex::encode(order_key)
}

pub fn cursor_in(
    cursor: &str,
    max_bytes: usize,
    field: &str,
) -> Result<Option<String>, FieldViolation> {
    if cursor.is_empty() {
        return Ok(None);
    }
    let bad = || {
        FieldViolation::new(
            field,
            format!(
                "must be a next_cursor this service returned, got {}",
                validate::quote(cursor)
            ),
        )
    };
    if cursor.len() > 2 * max_bytes {
        return Err(bad());
    }
    let bytes = hex::decode(cursor).map_err(|_| bad())?;
    String::from_utf8(bytes).map(Some).map_err(|_| bad())
}
