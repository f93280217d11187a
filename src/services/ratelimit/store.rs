//! What a rate-limit store does; the memory and Redis stores implement it.

use std::sync::Arc;

use async_trait::async_trait;

use super::reservation::{Reservation, Settled, Settlement};
use super::{Decision, Limited, RateCheck, memory::MemoryRateLimits, redis::RedisRateLimits};
use crate::keys::Tenant;
use crate::store::{Backend, StoreError};

#[async_trait]
pub trait Store: Send + Sync {
    /// Applies independent checks, each atomically, answered in order.
    async fn check(
        &self,
        tenant: &Tenant,
        checks: &[RateCheck],
    ) -> Result<Vec<Decision>, StoreError>;
    /// Applies the checks all or nothing: every one consumes, or (when one
    /// does not fit) none does and each answers as if alone. `None` when
    /// their states are on different Redis Cluster slots, where no single
    /// script can see them all.
    async fn check_all(
        &self,
        tenant: &Tenant,
        checks: &[RateCheck],
    ) -> Result<Option<(bool, Vec<Decision>)>, StoreError>;
    /// Consumes the cost whether or not it fits: usage that already
    /// happened, which may overdraw the budget until it refills.
    async fn report(&self, tenant: &Tenant, check: &RateCheck) -> Result<Decision, StoreError>;
    /// One check that, when it consumes, leaves the marker of reservation
    /// `id` beside the state (see [`super::reservation`]).
    async fn reserve(
        &self,
        tenant: &Tenant,
        check: &RateCheck,
        id: &str,
    ) -> Result<Decision, StoreError>;
    /// Settles a reservation of `target`: gives back or consumes as
    /// `settlement` says, once.
    async fn settle(
        &self,
        tenant: &Tenant,
        target: &Limited,
        reservation: &Reservation,
        settlement: Settlement,
    ) -> Result<Settled, StoreError>;
    /// Forgets the state behind `target`, and tells every replica (see
    /// [`Store::resets`]).
    async fn reset(&self, tenant: &Tenant, target: &Limited) -> Result<(), StoreError>;
    /// `(tenant, key)` of every Reset on any replica, where the store can
    /// tell (a single Redis server, through pub/sub); `None` where it
    /// cannot, or need not (the memory store serves one replica).
    fn resets(&self) -> Option<tokio::sync::mpsc::Receiver<(String, String)>> {
        None
    }
}

/// The store on the application's backend.
pub fn build(backend: &Backend) -> Arc<dyn Store> {
    match backend {
        Backend::Memory(memory) => MemoryRateLimits::new(memory),
        Backend::Redis(redis) => Arc::new(RedisRateLimits::new(redis.clone())),
    }
}

/// The key of a target's state: one per (caller key, scope, algorithm).
pub(super) fn state_key(tenant: &Tenant, target: &Limited) -> String {
    target_key(tenant, target, &[])
}

/// The marker of reservation `id` of a target: beside its state, in the
/// same slot.
pub(super) fn reservation_key(tenant: &Tenant, target: &Limited, id: &str) -> String {
    target_key(tenant, target, &["rsv", id])
}

/// A target's reset generation: a `Reset` moves it on, voiding the
/// reservations made before (see `lua/reset.lua`).
pub(super) fn generation_key(tenant: &Tenant, target: &Limited) -> String {
    target_key(tenant, target, &["gen"])
}

fn target_key(tenant: &Tenant, target: &Limited, more: &[&str]) -> String {
    let scope = match &target.scope {
        super::Scope::Inline => std::borrow::Cow::Borrowed("inline"),
        super::Scope::Policy(name) => std::borrow::Cow::Owned(format!("p={name}")),
    };
    let mut parts: Vec<&str> = vec![&scope, target.limit.algorithm.as_str()];
    parts.extend_from_slice(more);
    crate::keys::key(tenant, super::SPACE, &target.key, &parts)
}
