//! datalayer: the data-layer building blocks bots need — rate limiting,
//! caching, sessions, and more as they land — over gRPC, backed by Redis or
//! by an in-process memory store.
//!
//! A tour, following one call (`RateLimitService/Check`) from the wire to
//! Redis and back:
//!
//! * [`startup`] builds the [`startup::Application`]: the listener, the
//!   [`store::Backend`] (memory, or [`store::redis::Redis`]), every service
//!   of the registration list, `grpc.health.v1`, reflection, shutdown.
//! * [`services`] is that list, one line per service; [`registry`] is what a
//!   service implements to be on it. Each service is one folder,
//!   `services/<name>/`: its domain (`mod.rs`), its settings, its handler
//!   (`grpc.rs`), its store trait (`store.rs`) with a memory and a Redis
//!   implementation, and its Lua scripts.
//! * [`grpc`] is the path every call shares, written once: span, tenant and
//!   deadline ([`grpc::Ctx`]), metrics, and the one mapping of
//!   [`error::Error`] to a status. The handler (`services/ratelimit/grpc.rs`)
//!   only converts the request to domain types, calls its store and
//!   converts the answer.
//! * [`validate`] holds the shared checks and reports every bad field at
//!   once; a leaf module, like [`settings`] (types that describe their own
//!   bounds) and [`keys`] (the one place keys are spelled, with the tenant).
//! * The store (`services/ratelimit/redis.rs`) names its keys through
//!   [`keys`] and runs its Lua script through [`store::redis`], which
//!   pipelines concurrent calls onto a few connections (or one pipeline per
//!   slot on a cluster). The memory store runs the same algorithm in Rust;
//!   one conformance suite (`tests/it/`) proves they agree.
//! * [`server`] is the listener: our accept loop over hyper's HTTP/2, so a
//!   peer that never speaks, idles, floods connections or never ends its
//!   body is bounded; it also turns undecodable requests into
//!   `INVALID_ARGUMENT`.
//! * [`config`] loads the settings (defaults < file < `DATALAYER__*` env),
//!   validates them all and renders their schema and reference;
//!   [`telemetry`] sets up logs and OTLP traces; [`health`] runs the probe;
//!   [`metrics`] serves Prometheus.

pub mod access;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod cron;
pub mod error;
pub mod grpc;
pub mod health;
pub mod keys;
pub mod metrics;
pub mod random;
pub mod registry;
pub mod server;
pub mod services;
pub mod settings;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod validate;

/// Code generated from every package under `proto/`, as a module tree:
/// `proto::datalayer::ratelimit::v1`, ...
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/_includes.rs"));

    /// The descriptor set served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("datalayer_descriptor");
}
