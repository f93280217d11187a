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
