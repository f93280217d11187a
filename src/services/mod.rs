//! One gRPC handler per service. Each one validates its request, calls its
//! store trait and maps the answer; [`crate::rpc::serve`] does the rest.

pub mod cache;
pub mod ratelimit;
pub mod session;

/// Microseconds as a protobuf `Duration`.
pub(crate) fn duration(us: u64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: (us / 1_000_000) as i64,
        nanos: ((us % 1_000_000) * 1_000) as i32,
    }
}

pub(crate) use crate::error::proto_duration as to_duration;
