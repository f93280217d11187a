//! datalayer: rate limiting (and, as they land, caching, sessions, feature
//! flags, leaderboards and job queues) over gRPC, backed by Redis or by an
//! in-process memory store.
//!
//! A tour, following one call from the wire to Redis:
//!
//! * [`startup`] builds the [`startup::Application`]: listener, store,
//!   services, `grpc.health.v1`, reflection, graceful shutdown.
//! * [`services`] holds one handler per gRPC service. A handler validates its
//!   request, calls its store trait and maps the answer — nothing more.
//! * [`rpc`] is the path every call shares: the SERVER span (continuing the
//!   caller's W3C trace), the deadline, the store budget within it, and the
//!   mapping of [`error::Error`] to a gRPC status.
//! * [`error`]: caller mistakes are `INVALID_ARGUMENT` with
//!   `google.rpc.BadRequest`; a store that does not answer is `UNAVAILABLE`.
//! * Domain modules such as [`ratelimit`] say what a request means and hold
//!   the algorithms.
//! * [`store`] has one trait per capability and two implementations:
//!   [`store::redis`] (Lua scripts in `store/redis/lua/`, one per operation)
//!   and [`store::memory`]. `tests/` runs one conformance suite against both.
//! * [`keys`] is the one function that names Redis keys.
//! * [`config`] loads typed settings (defaults < file < `DATALAYER__*` env);
//!   [`telemetry`] sets up logs and OTLP traces; [`health`] runs the probe.

pub mod cache;
pub mod config;
pub mod error;
pub mod health;
pub mod keys;
pub mod metrics;
pub mod ratelimit;
pub mod rpc;
pub mod services;
pub mod session;
pub mod startup;
pub mod store;
pub mod telemetry;

/// Code generated from `proto/datalayer/v1/*.proto`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    tonic::include_proto!("datalayer.v1");

    /// The descriptor set served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("datalayer_descriptor");
}
