//! One gRPC handler per service. Each one validates its request, calls its
//! store trait and maps the answer; [`crate::rpc::serve`] does the rest.

pub mod cache;
pub mod ratelimit;
pub mod session;

use std::time::Duration;

use crate::error::FieldViolation;

/// Microseconds as a protobuf `Duration`.
pub(crate) fn duration(us: u64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: (us / 1_000_000) as i64,
        nanos: ((us % 1_000_000) * 1_000) as i32,
    }
}

/// A protobuf `Duration` from a request: absent stays `None`; negative or
/// malformed ones are the caller's mistake, named by `field`.
pub(crate) fn to_duration(
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
