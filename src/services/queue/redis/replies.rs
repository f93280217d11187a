//! Reading the queue scripts' replies into domain types.

use deadpool_redis::redis::{FromRedisValue, Value};

use crate::services::queue::{Dead, Delivery, Leased, Stats, decode_headers};
use crate::store::StoreError;

pub(super) fn internal(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::internal(format!("queue script reply ({what}): {e}"))
}

pub(super) fn int(v: &Value, what: &str) -> Result<i64, StoreError> {
    i64::from_redis_value(v.clone()).map_err(|e| internal(what, e))
}

pub(super) fn text(v: &Value, what: &str) -> Result<String, StoreError> {
    String::from_redis_value(v.clone()).map_err(|e| internal(what, e))
}

pub(super) fn bytes(v: &Value, what: &str) -> Result<Vec<u8>, StoreError> {
    Vec::<u8>::from_redis_value(v.clone()).map_err(|e| internal(what, e))
}

pub(super) fn items(v: Value, what: &str) -> Result<Vec<Value>, StoreError> {
    Vec::<Value>::from_redis_value(v).map_err(|e| internal(what, e))
}

pub(super) fn u32_of(v: &Value, what: &str) -> Result<u32, StoreError> {
    Ok(int(v, what)?.clamp(0, u32::MAX as i64) as u32)
}

/// `lease.lua`: {next due, message...}.
pub(super) fn leased(reply: Value) -> Result<Leased, StoreError> {
    let mut reply = items(reply, "lease")?.into_iter();
    let next = int(
        &reply.next().ok_or_else(|| internal("lease", "empty"))?,
        "next",
    )?;
    let deliveries = reply
        .map(|item| {
            let f = items(item, "message")?;
            let [id, payload, headers, attempt, max, token, le, at, pr, group] = f.as_slice()
            else {
                return Err(internal("message", format!("{} fields", f.len())));
            };
            Ok(Delivery {
                id: text(id, "id")?,
                payload: bytes(payload, "payload")?,
                headers: decode_headers(&text(headers, "headers")?),
                attempt: u32_of(attempt, "attempt")?,
                max_attempts: u32_of(max, "max")?,
                token: text(token, "token")?,
                lease_expires_ms: int(le, "lease")?.max(0) as u64,
                enqueued_ms: int(at, "at")?.max(0) as u64,
                priority: u32_of(pr, "priority")?,
                group: text(group, "group")?,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Leased {
        deliveries,
        next_due_ms: (next >= 0).then_some(next as u64),
    })
}

/// `list_dead.lua`: one entry per dead message.
pub(super) fn dead(reply: Value) -> Result<Vec<Dead>, StoreError> {
    items(reply, "dead")?
        .into_iter()
        .map(|item| {
            let f = items(item, "dead")?;
            let [id, payload, headers, a, ma, at, pr, g, dt, rs, dq] = f.as_slice() else {
                return Err(internal("dead", format!("{} fields", f.len())));
            };
            Ok(Dead {
                delivery: Delivery {
                    id: text(id, "id")?,
                    payload: bytes(payload, "payload")?,
                    headers: decode_headers(&text(headers, "headers")?),
                    attempt: u32_of(a, "attempts")?,
                    max_attempts: u32_of(ma, "max")?,
                    token: String::new(),
                    lease_expires_ms: 0,
                    enqueued_ms: int(at, "at")?.max(0) as u64,
                    priority: u32_of(pr, "priority")?,
                    group: text(g, "group")?,
                },
                died_ms: int(dt, "died")?.max(0) as u64,
                reason: text(rs, "reason")?,
                cursor: int(dq, "sequence")?.max(0) as u64,
            })
        })
        .collect()
}

/// `stats.lua`: counts, totals, and the rate buckets.
pub(super) fn stats(reply: Value) -> Result<Stats, StoreError> {
    let f = items(reply, "stats")?;
    let n = |i: usize| -> Result<i64, StoreError> {
        int(f.get(i).ok_or_else(|| internal("stats", "short"))?, "stats")
    };
    let u = |i: usize| n(i).map(|v| v.max(0) as u64);
    let (now, oldest) = (n(16)?, n(4)?);
    // Per second over the last minute: this minute so far, and the share
    // of the previous one still inside the last 60 s.
    let into = n(15)? as f64 / 60_000.0;
    let per_second = |cur: f64, prev: f64| (cur + prev * (1.0 - into)) / 60.0;
    Ok(Stats {
        waiting: u(0)?,
        delayed: u(1)?,
        leased: u(2)?,
        dead: u(3)?,
        oldest_waiting_ms: (oldest >= 0).then(|| (now - oldest).max(0) as u64),
        paused: n(5)? == 1,
        enqueued_total: u(6)?,
        acked_total: u(7)?,
        retried_total: u(8)?,
        dead_total: u(9)?,
        expired_total: u(10)?,
        enqueue_rate: per_second(n(11)? as f64, n(12)? as f64),
        ack_rate: per_second(n(13)? as f64, n(14)? as f64),
    })
}
