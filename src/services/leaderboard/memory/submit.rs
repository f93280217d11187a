//! `Submit` on the memory store, as `lua/submit.lua` does it.

use super::{Boards, Period};
use crate::services::leaderboard::model::{Applied, Ranked, Record, Submission, apply, order_key};
use crate::services::leaderboard::store::{Limits, SubmitResult, Submitted};

pub(super) fn submit(
    b: &mut Boards,
    now: u64,
    board: &str,
    sub: &Submission,
    limits: Limits,
) -> Submitted {
    let Some(def) = b.defs.get(board).cloned() else {
        return Submitted::NoBoard;
    };
    let idem_key = (!sub.idempotency_key.is_empty()).then(|| {
        (
            board.to_owned(),
            def.generation,
            sub.owner_id.clone(),
            sub.idempotency_key.clone(),
        )
    });
    if let Some((done, at)) = idem_key.as_ref().and_then(|k| b.idem.get(k))
        && *at > now
    {
        let mut done = done.clone();
        done.replayed = true;
        return Submitted::Done(done);
    }
    let span = def.period_at(now);
    let key = (board.to_owned(), def.generation, span.start_ms);
    let p = b.periods.entry(key).or_default();
    if p.expires_ms.is_some_and(|at| at <= now) {
        *p = Period::default();
    }
    p.expires_ms = def.expire_at_ms(span);
    let old_key = p.key(&def, &sub.owner_id);
    let old = p.records.get(&sub.owner_id).cloned();
    let previous_rank = old_key.as_deref().map_or(0, |k| p.rank(k));
    let op = sub.operator.unwrap_or(def.operator);
    let applied = apply(
        op,
        def.sort,
        def.decrement_floor,
        old.as_ref().map(|r| (r.score, r.subscore)),
        sub.score,
        sub.subscore,
    );
    let (score, subscore) = match applied {
        Applied::OutOfRange => return Submitted::OutOfRange,
        Applied::Kept => old
            .as_ref()
            .map_or((sub.score, sub.subscore), |r| (r.score, r.subscore)),
        Applied::Changed(score, subscore) => (score, subscore),
    };
    if old.is_none() && p.records.len() as u64 >= limits.max_owners {
        return Submitted::Full;
    }
    let mut record = old.clone().unwrap_or_else(|| Record {
        owner_id: sub.owner_id.clone(),
        score,
        subscore,
        seq: 0,
        updated_ms: now,
        submissions: 0,
        metadata: Vec::new(),
    });
    if old.is_none_or(|r| (r.score, r.subscore) != (score, subscore)) {
        p.seq += 1;
        record.seq = p.seq;
        record.score = score;
        record.subscore = subscore;
        record.updated_ms = now;
    }
    if matches!(applied, Applied::Changed(..)) && !sub.metadata.is_empty() {
        record.metadata = sub.metadata.clone();
    }
    record.submissions += 1;
    let new_key = order_key(def.sort, def.tie_break, &record);
    let improved = old_key.as_deref() != Some(new_key.as_str());
    if let Some(k) = &old_key {
        p.order.remove(k);
    }
    p.order.insert(new_key.clone(), record.owner_id.clone());
    p.records.insert(record.owner_id.clone(), record.clone());
    let done = SubmitResult {
        record: Ranked {
            rank: p.rank(&new_key),
            record,
        },
        previous_rank,
        improved,
        period: span.id(),
        replayed: false,
    };
    if let Some(k) = idem_key {
        b.idem
            .insert(k, (done.clone(), now + limits.idempotency_ms));
    }
    Submitted::Done(done)
}
