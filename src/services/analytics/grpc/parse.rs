//! Requests to domain values: every bad field of a request named at once.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::grpc::convert::timestamp_in;
use crate::proto::datalayer::analytics::v1 as pb;
use crate::services::analytics::Settings;
use crate::services::analytics::model::{Amount, Event, Filters, Range};
use crate::validate::{self, FieldViolation, Invalid};

/// Longest dimension or top label name, in bytes.
const MAX_LABEL_BYTES: usize = 64;
/// Largest `count` of one event.
const MAX_COUNT: i64 = 1_000_000_000;
/// Largest magnitude of a sample: sums stay exact enough for years.
const MAX_SAMPLE: f64 = 1e15;
/// A query's range when `from` is unset: a day before `to`.
const DEFAULT_SPAN_MS: u64 = 24 * 3600 * 1000;

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub fn metric(name: &str, field: &str) -> Result<(), FieldViolation> {
    validate::name(name, field)
}

/// A dimension or top label name: 1 to 64 bytes of `[A-Za-z0-9_.:-]`.
pub fn label(name: &str, field: &str) -> Result<(), FieldViolation> {
    validate::name(name, field)?;
    if name.len() > MAX_LABEL_BYTES {
        return Err(FieldViolation::new(
            field,
            format!(
                "must be at most {MAX_LABEL_BYTES} bytes, got {}",
                name.len()
            ),
        ));
    }
    Ok(())
}

/// Labels and their values, as a sorted map.
fn labels(
    s: &Settings,
    map: &HashMap<String, String>,
    field: &str,
) -> Result<BTreeMap<String, String>, Invalid> {
    let mut bad = Vec::new();
    if map.len() > s.max_dimensions {
        bad.push(FieldViolation::new(
            field,
            format!(
                "at most {} per event (analytics.max_dimensions), got {}",
                s.max_dimensions,
                map.len()
            ),
        ));
    }
    let mut out = BTreeMap::new();
    for (name, value) in map {
        let at = format!("{field}.{}", truncated(name));
        let checked = validate::all((
            label(name, &at),
            validate::text(value, &at, 1, s.max_value_bytes),
        ));
        match checked {
            Ok(_) => {
                out.insert(name.clone(), value.clone());
            }
            Err(Invalid(vs)) => bad.extend(vs),
        }
    }
    if bad.is_empty() {
        Ok(out)
    } else {
        Err(Invalid(bad))
    }
}

/// A map key as a field path shows it: at most 64 characters.
fn truncated(name: &str) -> String {
    name.chars().take(validate::QUOTE_CHARS).collect()
}

fn amount(value: Option<&pb::event::Value>, field: &str) -> Result<Amount, FieldViolation> {
    match value {
        None => Ok(Amount::Count(1)),
        Some(pb::event::Value::Count(n)) if (1..=MAX_COUNT).contains(n) => Ok(Amount::Count(*n)),
        Some(pb::event::Value::Count(n)) => Err(FieldViolation::new(
            format!("{field}.count"),
            format!("must be 1 to {MAX_COUNT}, got {n}"),
        )),
        Some(pb::event::Value::Sample(v)) if v.is_finite() && v.abs() <= MAX_SAMPLE => {
            Ok(Amount::Sample(*v))
        }
        Some(pb::event::Value::Sample(v)) => Err(FieldViolation::new(
            format!("{field}.sample"),
            format!("must be a finite number within ±1e15, got {v}"),
        )),
    }
}

fn time(
    s: &Settings,
    t: Option<&prost_types::Timestamp>,
    now: u64,
    field: &str,
) -> Result<Option<u64>, FieldViolation> {
    let Some(at) = timestamp_in(t, field)? else {
        return Ok(None);
    };
    let oldest = now.saturating_sub(s.max_event_age.as_millis() as u64);
    let latest = now + s.max_clock_skew.as_millis() as u64;
    if at < oldest || at > latest {
        return Err(FieldViolation::new(
            field,
            format!(
                "must be within {} before and {} after the server's clock (analytics.max_event_age, analytics.max_clock_skew); leave it unset for now",
                validate::duration(s.max_event_age),
                validate::duration(s.max_clock_skew)
            ),
        ));
    }
    Ok(Some(at))
}

pub fn event(s: &Settings, e: &pb::Event, now: u64) -> Result<Event, Invalid> {
    let top = labels(s, &e.top, "top");
    let (_, dimensions, amount, at_ms, _, top) = validate::all((
        metric(&e.metric, "metric"),
        labels(s, &e.dimensions, "dimensions"),
        amount(e.value.as_ref(), "value"),
        time(s, e.time.as_ref(), now, "time"),
        validate::text(&e.unique_id, "unique_id", 0, s.max_value_bytes),
        top,
    ))?;
    Ok(Event {
        metric: e.metric.clone(),
        dimensions,
        amount,
        at_ms,
        unique_id: (!e.unique_id.is_empty()).then(|| e.unique_id.clone()),
        top,
    })
}

pub fn events(s: &Settings, events: &[pb::Event]) -> Result<Vec<Event>, Invalid> {
    validate::batch(events.len(), "events", s.max_batch, "analytics.max_batch")?;
    let now = now_ms();
    validate::each(events, "events", |e| event(s, e, now))
}

/// `from`..`to`: `to` unset is now, `from` unset a day before `to`.
pub fn range(
    from: Option<&prost_types::Timestamp>,
    to: Option<&prost_types::Timestamp>,
) -> Result<Range, Invalid> {
    let (from, to) = validate::all((timestamp_in(from, "from"), timestamp_in(to, "to")))?;
    let to_ms = to.unwrap_or_else(now_ms);
    let from_ms = from.unwrap_or(to_ms.saturating_sub(DEFAULT_SPAN_MS));
    if from_ms > to_ms {
        return Err(Invalid::one("from", "must not be after `to`"));
    }
    Ok(Range { from_ms, to_ms })
}

pub fn filters(s: &Settings, filters: &[pb::DimensionFilter]) -> Result<Filters, Invalid> {
    if filters.len() > s.max_dimensions {
        return Err(Invalid::one(
            "filters",
            format!("at most {} (analytics.max_dimensions)", s.max_dimensions),
        ));
    }
    let parsed = validate::each(filters, "filters", |f| {
        let some = if f.values.is_empty() {
            Err(FieldViolation::new(
                "values",
                "must name at least one value",
            ))
        } else {
            Ok(())
        };
        let values = validate::each(&f.values, "values", |v| {
            validate::text(v, "", 1, s.max_value_bytes).map(|_| v.clone())
        });
        let (_, _, values) = validate::all((label(&f.dimension, "dimension"), some, values))?;
        Ok::<_, Invalid>((
            f.dimension.clone(),
            values.into_iter().collect::<BTreeSet<_>>(),
        ))
    })?;
    Ok(Filters(parsed))
}

pub fn group_by(s: &Settings, group_by: &[String]) -> Result<Vec<String>, Invalid> {
    if group_by.len() > s.max_dimensions {
        return Err(Invalid::one(
            "group_by",
            format!("at most {} (analytics.max_dimensions)", s.max_dimensions),
        ));
    }
    validate::each(group_by, "group_by", |d| label(d, "").map(|_| d.clone()))
}
