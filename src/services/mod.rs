//! One gRPC handler per service. Each one validates its request, calls its
//! store trait and maps the answer; [`crate::rpc::serve`] does the rest.

pub mod ratelimit;
