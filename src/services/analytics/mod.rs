//! Real-time analytics: counters, samples, unique counts and top lists in
//! time buckets at several resolutions. `model.rs` is the domain (buckets,
//! combinations, aggregation, grouping); `settings.rs` the resolutions and
//! bounds; `service.rs` what a Track does (the index, the cap); `grpc.rs`
//! converts the wire; `store.rs` is what the memory and Redis stores
//! implement; `recorder.rs` counts rate-limit decisions in memory and
//! flushes them as events.
//!
//! Memory is bounded by construction: a tenant has at most `max_metrics`
//! metrics, a metric at most `max_combinations` series per bucket (more
//! fold into `__other__`), a top list at most twice `top_size` values per
//! bucket, and every key expires its retention after its bucket ends.

mod grpc;
mod memory;
pub mod model;
pub mod recorder;
mod redis;
pub mod service;
pub mod settings;
pub mod store;

pub use settings::Settings;

use crate::keys::Space;
use crate::registry::{Module, RegisterError, Registrar};

/// A metric's buckets and bookkeeping, tagged by metric.
pub const METRIC_SPACE: Space = Space::expiring("an");
/// The tenant's metrics.
pub const INDEX_SPACE: Space = Space::expiring("anx");

pub struct Service;

impl Module for Service {
    const NAME: &'static str = "analytics";
    type Settings = Settings;
    const SPACES: &'static [Space] = &[METRIC_SPACE, INDEX_SPACE];

    fn register(settings: &Settings, registrar: &mut Registrar<'_>) -> Result<(), RegisterError> {
        let analytics =
            service::Analytics::new(store::build(registrar.backend()), settings.clone());
        if let Some(recorder) = registrar.handed::<std::sync::Arc<recorder::Recorder>>() {
            recorder.spawn_flusher(
                analytics.clone(),
                settings.flush_interval,
                registrar.shared().shutdown.clone(),
            );
        }
        registrar.add(grpc::Handler::new(analytics));
        Ok(())
    }
}
