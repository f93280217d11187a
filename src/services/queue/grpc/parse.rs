//! A `MessageSpec` as sent → a [`NewMessage`], every bad field named.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::grpc::convert::{duration_in, timestamp_in};
use crate::proto::datalayer::queue::v1 as pb;
use crate::services::queue::settings::{MAX_HEADER_BYTES, MAX_ID_BYTES, Settings};
use crate::services::queue::{Backoff, MAX_PRIORITY, NewMessage};
use crate::validate::{self, FieldViolation, Invalid};

/// Backoff when a message gives none: 1 s doubling to 5 min, jittered.
pub const DEFAULT_BACKOFF: Backoff = Backoff::Exponential {
    initial_ms: 1000,
    max_ms: 300_000,
    jitter: true,
};

/// Longest backoff delay, in ms (a day).
const MAX_BACKOFF_MS: u64 = 86_400_000;

fn headers(
    s: &Settings,
    h: &std::collections::HashMap<String, String>,
) -> Result<BTreeMap<String, String>, FieldViolation> {
    if h.len() > s.max_headers {
        return Err(FieldViolation::new(
            "headers",
            format!(
                "at most {} headers (queue.max_headers), got {}",
                s.max_headers,
                h.len()
            ),
        ));
    }
    for (name, value) in h {
        let name_ok = !name.is_empty()
            && name.len() <= 128
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !name_ok {
            return Err(FieldViolation::new(
                "headers",
                format!(
                    "header name {} must be 1 to 128 bytes of [A-Za-z0-9-_.]",
                    validate::quote(name)
                ),
            ));
        }
        if value.len() > MAX_HEADER_BYTES || value.chars().any(char::is_control) {
            return Err(FieldViolation::new(
                "headers",
                format!(
                    "header {name}: values are at most {MAX_HEADER_BYTES} bytes without control characters"
                ),
            ));
        }
    }
    Ok(h.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

fn backoff(b: Option<&pb::Backoff>) -> Result<Backoff, FieldViolation> {
    let ms = |d: Option<&prost_types::Duration>,
              field: &str,
              required: bool|
     -> Result<u64, FieldViolation> {
        match duration_in(d, field)? {
            None if required => Err(FieldViolation::new(field, "is required")),
            None => Ok(0),
            Some(d) if d > Duration::from_millis(MAX_BACKOFF_MS) => {
                Err(FieldViolation::new(field, "must be at most 1d"))
            }
            Some(d) => Ok(d.as_millis() as u64),
        }
    };
    match b.and_then(|b| b.kind.as_ref()) {
        None => Ok(DEFAULT_BACKOFF),
        Some(pb::backoff::Kind::Fixed(d)) => Ok(Backoff::Fixed {
            ms: ms(Some(d), "backoff.fixed", true)?,
        }),
        Some(pb::backoff::Kind::Exponential(e)) => {
            let initial = ms(e.initial.as_ref(), "backoff.exponential.initial", true)?;
            let max = ms(e.max.as_ref(), "backoff.exponential.max", false)?;
            let max = if max == 0 { MAX_BACKOFF_MS } else { max };
            if initial == 0 || max < initial {
                return Err(FieldViolation::new(
                    "backoff.exponential",
                    "initial must be above 0 and max at least initial",
                ));
            }
            Ok(Backoff::Exponential {
                initial_ms: initial,
                max_ms: max,
                jitter: e.jitter,
            })
        }
    }
}

/// Validates one message; `now_ms` resolves `not_before` bounds.
/// `template`: a schedule's, where absolute times make no sense.
pub fn message(
    s: &Settings,
    m: pb::MessageSpec,
    now_ms: u64,
    template: bool,
) -> Result<NewMessage, Invalid> {
    let max_delay_ms = s.max_delay.as_millis() as u64;
    let not_before = timestamp_in(m.not_before.as_ref(), "not_before").and_then(|t| match t {
        Some(_) if template => Err(FieldViolation::new(
            "not_before",
            "a schedule's template cannot have one; use delay",
        )),
        Some(t) if t > now_ms + max_delay_ms => Err(FieldViolation::new(
            "not_before",
            format!(
                "must be within {} from now (queue.max_delay)",
                validate::duration(s.max_delay)
            ),
        )),
        t => Ok(t.unwrap_or(0)),
    });
    let expire_at = timestamp_in(m.expire_at.as_ref(), "expire_at").and_then(|t| match t {
        Some(_) if template => Err(FieldViolation::new(
            "expire_at",
            "a schedule's template cannot have one",
        )),
        t => Ok(t.unwrap_or(0)),
    });
    let delay = duration_in(m.delay.as_ref(), "delay")
        .and_then(|d| s.optional_ms(d, s.max_delay, "queue.max_delay", "delay"));
    let window = duration_in(m.dedup_window.as_ref(), "dedup_window").and_then(|d| match d {
        None => Ok(s.default_dedup_window.as_millis() as u64),
        Some(d) => s.optional_ms(
            Some(d),
            s.max_dedup_window,
            "queue.max_dedup_window",
            "dedup_window",
        ),
    });
    let lease = duration_in(m.lease_duration.as_ref(), "lease_duration")
        .and_then(|d| s.lease_ms(d, Some(s.default_lease), "lease_duration"));
    let priority = if m.priority > MAX_PRIORITY {
        Err(FieldViolation::new(
            "priority",
            format!("must be 0 to {MAX_PRIORITY}, got {}", m.priority),
        ))
    } else {
        Ok(m.priority)
    };
    let attempts = match m.max_attempts {
        0 => Ok(s.default_max_attempts),
        n if n > s.max_attempts => Err(FieldViolation::new(
            "max_attempts",
            format!(
                "must be at most {} (queue.max_attempts), got {n}",
                s.max_attempts
            ),
        )),
        n => Ok(n),
    };
    let (
        _,
        headers,
        _,
        _,
        not_before,
        expire_at,
        delay,
        window,
        lease,
        priority,
        attempts,
        backoff,
    ) = validate::all((
        s.payload(&m.payload, "payload"),
        headers(s, &m.headers),
        validate::text(&m.dedup_id, "dedup_id", 0, MAX_ID_BYTES),
        validate::text(&m.group_key, "group_key", 0, MAX_ID_BYTES),
        not_before,
        expire_at,
        delay,
        window,
        lease,
        priority,
        attempts,
        backoff(m.backoff.as_ref()),
    ))?;
    Ok(NewMessage {
        payload: m.payload.to_vec(),
        headers,
        dedup_id: m.dedup_id,
        dedup_window_ms: window.max(1),
        delay_ms: delay,
        not_before_ms: not_before,
        priority,
        group: m.group_key,
        max_attempts: attempts,
        backoff,
        lease_ms: lease,
        expire_at_ms: expire_at,
    })
}

/// A message id this service issued: its decimal number.
pub(super) fn message_id(id: &str, field: &str) -> Result<(), FieldViolation> {
    if !id.is_empty() && id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(FieldViolation::new(
            field,
            format!(
                "is not a message id this service issued, got {}",
                validate::quote(id)
            ),
        ))
    }
}
