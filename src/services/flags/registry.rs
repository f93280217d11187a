//! Every replica's own copy of the flag sets, compiled: evaluations read
//! only this, so their latency and availability never depend on Redis.
//! The store's changes reach it through [`super::sync`]; each change is
//! broadcast to the replica's EventStream and Watch subscribers.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, RwLock},
};

use serde_json::{Map, Value};
use tokio::sync::{broadcast, watch};

use super::eval::{CompiledFlag, EvalError};
use super::model::parse_set_meta;
use super::store::StoredSet;
use crate::keys::Tenant;

/// One flag set, compiled.
#[derive(Debug)]
pub struct FlagSet {
    pub name: String,
    pub version: u64,
    pub metadata: Map<String, Value>,
    pub evaluators: Map<String, Value>,
    pub flags: BTreeMap<String, Arc<CompiledFlag>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeType {
    Write,
    Update,
    Delete,
}

impl ChangeType {
    /// flagd's word for it in `configuration_change` events.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeType::Write => "write",
            ChangeType::Update => "update",
            ChangeType::Delete => "delete",
        }
    }
}

/// What changed in one flag set.
#[derive(Debug, Clone)]
pub struct Change {
    pub tenant: Tenant,
    pub set: String,
    pub version: u64,
    pub flags: Vec<(String, ChangeType)>,
}

pub struct Registry {
    tenants: RwLock<HashMap<Tenant, BTreeMap<String, Arc<FlagSet>>>>,
    /// The configured sources' selectors, in order: without a selector, a
    /// later source's flag wins over an earlier one's (as in flagd).
    order: Vec<String>,
    changes: broadcast::Sender<Arc<Change>>,
    ready: watch::Sender<bool>,
    pub static_context: Map<String, Value>,
    max_depth: usize,
}

fn lock<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

impl Registry {
    pub fn new(order: Vec<String>, static_context: Map<String, Value>, max_depth: usize) -> Self {
        Self {
            tenants: RwLock::new(HashMap::new()),
            order,
            changes: broadcast::channel(1024).0,
            ready: watch::channel(false).0,
            static_context,
            max_depth,
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.changes.subscribe()
    }

    /// True once the first load finished (EventStream then says ready).
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    pub fn mark_ready(&self) {
        self.ready.send_replace(true);
    }

    pub fn knows(&self, tenant: &Tenant) -> bool {
        lock(&self.tenants).contains_key(tenant)
    }

    /// The tenants whose flags this replica holds.
    pub fn tenants(&self) -> Vec<Tenant> {
        lock(&self.tenants).keys().cloned().collect()
    }

    /// Starts holding `tenant` (with no sets yet).
    pub fn adopt(&self, tenant: &Tenant) {
        let mut tenants = self.tenants.write().unwrap_or_else(|p| p.into_inner());
        tenants.entry(tenant.clone()).or_default();
    }

    pub fn set(&self, tenant: &Tenant, name: &str) -> Option<Arc<FlagSet>> {
        lock(&self.tenants).get(tenant)?.get(name).cloned()
    }

    pub fn sets(&self, tenant: &Tenant) -> Vec<Arc<FlagSet>> {
        let tenants = lock(&self.tenants);
        let Some(sets) = tenants.get(tenant) else {
            return Vec::new();
        };
        let mut ordered: Vec<Arc<FlagSet>> = self
            .order
            .iter()
            .filter_map(|name| sets.get(name).cloned())
            .collect();
        ordered.extend(
            sets.values()
                .filter(|s| !self.order.contains(&s.name))
                .cloned(),
        );
        ordered
    }

    /// The flag a selector (or, with none, every set) serves under `key`.
    pub fn lookup(
        &self,
        tenant: &Tenant,
        selector: Option<&str>,
        key: &str,
    ) -> Result<(Arc<FlagSet>, Arc<CompiledFlag>), EvalError> {
        let candidates = match selector {
            Some(name) => self.set(tenant, name).into_iter().collect(),
            None => self.sets(tenant),
        };
        candidates
            .into_iter()
            .rev()
            .find_map(|set| set.flags.get(key).cloned().map(|flag| (set, flag)))
            .ok_or_else(|| EvalError::NotFound(key.to_owned()))
    }

    /// Every flag a selector serves, each once (later sets win).
    pub fn all(
        &self,
        tenant: &Tenant,
        selector: Option<&str>,
    ) -> Vec<(Arc<FlagSet>, Arc<CompiledFlag>)> {
        let sets = match selector {
            Some(name) => self.set(tenant, name).into_iter().collect(),
            None => self.sets(tenant),
        };
        let mut by_key: BTreeMap<String, (Arc<FlagSet>, Arc<CompiledFlag>)> = BTreeMap::new();
        for set in sets {
            for (key, flag) in &set.flags {
                by_key.insert(key.clone(), (set.clone(), flag.clone()));
            }
        }
        by_key.into_values().collect()
    }

    /// Takes a set as the store holds it; broadcasts what changed. A
    /// snapshot older than the one held is ignored: reads race (a write's
    /// own refresh, a change notice, the periodic resync), and set versions
    /// only grow, so the older answer is the stale one.
    pub fn replace(&self, tenant: &Tenant, stored: StoredSet) -> Option<Arc<Change>> {
        if self
            .set(tenant, &stored.name)
            .is_some_and(|o| o.version >= stored.version)
        {
            return None;
        }
        let (metadata, evaluators) = parse_set_meta(&stored.meta);
        let flags: BTreeMap<String, Arc<CompiledFlag>> = stored
            .flags
            .iter()
            .map(|f| {
                let compiled = CompiledFlag::new(
                    &f.key,
                    &f.definition,
                    f.version,
                    &evaluators,
                    self.max_depth,
                );
                (f.key.clone(), Arc::new(compiled))
            })
            .collect();
        // Compare and swap under the write lock, and announce there too, so
        // two refreshes racing with the same snapshot announce it once and
        // changes are announced in version order.
        let mut tenants = self.tenants.write().unwrap_or_else(|p| p.into_inner());
        let sets = tenants.entry(tenant.clone()).or_default();
        let old = sets.get(&stored.name);
        if old.is_some_and(|o| o.version >= stored.version) {
            return None;
        }
        let meta_changed =
            old.is_some_and(|o| o.metadata != metadata || o.evaluators != evaluators);
        let mut changed = Vec::new();
        for (key, flag) in &flags {
            match old.and_then(|o| o.flags.get(key)) {
                None => changed.push((key.clone(), ChangeType::Write)),
                Some(before) if before.definition != flag.definition || meta_changed => {
                    changed.push((key.clone(), ChangeType::Update))
                }
                Some(_) => {}
            }
        }
        if let Some(old) = old {
            for key in old.flags.keys().filter(|k| !flags.contains_key(*k)) {
                changed.push((key.clone(), ChangeType::Delete));
            }
        }
        let set = Arc::new(FlagSet {
            name: stored.name.clone(),
            version: stored.version,
            metadata,
            evaluators,
            flags,
        });
        sets.insert(stored.name.clone(), set);
        self.announce(tenant, stored.name, stored.version, changed)
    }

    /// Drops a set the store no longer has.
    pub fn forget(&self, tenant: &Tenant, name: &str) -> Option<Arc<Change>> {
        let mut tenants = self.tenants.write().unwrap_or_else(|p| p.into_inner());
        let old = tenants.get_mut(tenant)?.remove(name)?;
        let changed = old
            .flags
            .keys()
            .map(|k| (k.clone(), ChangeType::Delete))
            .collect();
        self.announce(tenant, name.to_owned(), old.version, changed)
    }

    fn announce(
        &self,
        tenant: &Tenant,
        set: String,
        version: u64,
        flags: Vec<(String, ChangeType)>,
    ) -> Option<Arc<Change>> {
        if flags.is_empty() {
            return None;
        }
        let change = Arc::new(Change {
            tenant: tenant.clone(),
            set,
            version,
            flags,
        });
        // No subscriber is no error: nobody listens yet.
        let _ = self.changes.send(change.clone());
        Some(change)
    }
}
