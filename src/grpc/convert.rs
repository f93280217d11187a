//! Protobuf well-known types to and from the domain's plain values.
//! Handlers convert here; domains never see a protobuf type.

use std::time::Duration;

use crate::validate::FieldViolation;

/// A request's `Duration`: absent stays `None`; negative or malformed ones
/// are the caller's mistake, named by `field`.
pub fn duration_in(
    d: Option<&prost_types::Duration>,
    field: &str,
) -> Result<Option<Duration>, FieldViolation> {
    let Some(d) = d else { return Ok(None) };
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(FieldViolation::new(
            field,
            "must be a non-negative duration with nanos in [0, 1e9)",
        ));
    }
    Ok(Some(Duration::new(d.seconds as u64, d.nanos as u32)))
}

/// Microseconds as a protobuf `Duration`.
pub fn duration_out(us: u64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: (us / 1_000_000) as i64,
        nanos: ((us % 1_000_000) * 1_000) as i32,
    }
}

/// Microseconds since the Unix epoch as a protobuf `Timestamp`.
pub fn timestamp_out(us: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (us / 1_000_000) as i64,
        nanos: ((us % 1_000_000) * 1_000) as i32,
    }
}

/// A protobuf `Timestamp` as ms since the Unix epoch; `None` when unset.
pub fn timestamp_in(
    t: Option<&prost_types::Timestamp>,
    field: &str,
) -> Result<Option<u64>, FieldViolation> {
    let Some(t) = t else { return Ok(None) };
    if t.seconds < 0 || t.nanos < 0 || t.nanos >= 1_000_000_000 || t.seconds > 253_402_300_799 {
        return Err(FieldViolation::new(
            field,
            "must be a time after 1970 and before 10000, with nanos in [0, 1e9)",
        ));
    }
    Ok(Some(t.seconds as u64 * 1000 + t.nanos as u64 / 1_000_000))
}

/// Ms since the Unix epoch as a protobuf `Timestamp`.
pub fn timestamp_ms_out(ms: u64) -> prost_types::Timestamp {
    timestamp_out(ms * 1000)
}
