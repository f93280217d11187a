//! Feature flags, flagd-compatible: OpenFeature's flagd providers evaluate
//! against datalayer over flagd's own protocol (`flagd.evaluation.v1` and
//! `v2`, in [`flagd`]), and operators change flags through
//! `datalayer.flags.v1.FlagService` ([`admin`]): compare-and-set, an audit
//! trail, explanations.
//!
//! Flag sets live durably in the store; each replica holds them compiled in
//! memory ([`registry`]), kept current by change notices and a periodic
//! resync ([`sync`]), so evaluations never wait on Redis and go on while it
//! is down. [`model`] reads flagd JSON, [`logic`] and [`ops`] are the
//! targeting rules, [`eval`] is flagd's evaluation semantics.

mod admin;
mod convert;
pub mod eval;
mod flagd;
pub mod logic;
mod memory;
pub mod model;
pub mod ops;
mod redis;
pub mod registry;
pub mod settings;
pub mod store;
mod sync;

use std::sync::Arc;

pub use settings::Settings;

use crate::keys::{Space, Tenant};
use crate::registry::{Module, RegisterError, Registrar};
use crate::store::StoreError;
use registry::Registry;
use store::Store;

/// A flag set's keys, tagged by the set's name. Durable: flags are data.
pub const SET_SPACE: Space = Space::durable("fl");
/// The index of a tenant's flag sets.
pub const INDEX_SPACE: Space = Space::durable("fli");

pub struct Service;

impl Module for Service {
    const NAME: &'static str = "flags";
    type Settings = Settings;
    const SPACES: &'static [Space] = &[SET_SPACE, INDEX_SPACE];

    fn register(settings: &Settings, registrar: &mut Registrar<'_>) -> Result<(), RegisterError> {
        let shared = registrar.shared();
        let flags = Arc::new(Flags {
            registry: Arc::new(Registry::new(
                settings
                    .sources
                    .0
                    .iter()
                    .map(|s| s.selector.clone())
                    .collect(),
                settings.static_context.0.clone(),
                settings.max_targeting_depth,
            )),
            store: store::build(registrar.backend(), settings.max_audit_entries),
            settings: settings.clone(),
        });
        sync::start(
            flags.clone(),
            shared.default_tenant.clone(),
            shared.shutdown.clone(),
        );
        registrar.add(flagd::V1(flags.clone()));
        registrar.add(flagd::V2(flags.clone()));
        registrar.add(admin::Handler(flags));
        Ok(())
    }
}

/// Seconds since the Unix epoch (`$flagd.timestamp`).
pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What the handlers share: the compiled flags, the store, the settings.
pub struct Flags {
    pub registry: Arc<Registry>,
    pub store: Arc<dyn Store>,
    pub settings: Settings,
}

impl Flags {
    /// Re-reads one set from the store into this replica.
    pub async fn refresh(&self, tenant: &Tenant, set: &str) -> Result<(), StoreError> {
        match self.store.load(tenant, set).await? {
            Some(stored) => {
                self.registry.replace(tenant, stored);
            }
            None => {
                self.registry.forget(tenant, set);
            }
        }
        Ok(())
    }

    /// Re-reads every set whose version moved; drops those gone.
    pub async fn resync(&self, tenant: &Tenant) -> Result<(), StoreError> {
        let versions = self.store.versions(tenant).await?;
        for (name, version) in &versions {
            match self.registry.set(tenant, name).map(|s| s.version) {
                Some(held) if held == *version => {}
                // The store went back (its keys were deleted and written
                // again): start that set afresh.
                Some(held) if held > *version => {
                    self.registry.forget(tenant, name);
                    self.refresh(tenant, name).await?;
                }
                _ => self.refresh(tenant, name).await?,
            }
        }
        for set in self.registry.sets(tenant) {
            if !versions.iter().any(|(name, _)| *name == set.name) {
                self.registry.forget(tenant, &set.name);
            }
        }
        self.registry.adopt(tenant);
        Ok(())
    }

    /// Makes sure this replica holds `tenant`'s flags: the first call for a
    /// tenant other than the default one reads them from the store.
    pub async fn ensure(&self, tenant: &Tenant) {
        let known = self.registry.knows(tenant);
        if !known && let Err(e) = self.resync(tenant).await {
            tracing::warn!(%tenant, error = %e, "cannot read the flag sets yet");
        }
    }
}
