//! Flags in process memory: the same rules as the Lua scripts, one state
//! per tenant. Durable for the life of the process only.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::Arc,
};

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::registry::ChangeType;
use super::store::{Actor, AuditEntry, Store, StoredFlag, StoredSet, Write, WriteOutcome};
use crate::keys::Tenant;
use crate::store::StoreError;
use crate::store::memory::{Memory, PerTenant};

#[derive(Default)]
struct MemSet {
    version: u64,
    meta: String,
    flags: BTreeMap<String, (String, u64)>,
    source_sha: Option<String>,
    audit: VecDeque<AuditEntry>,
    next_id: u64,
}

impl MemSet {
    fn record(
        &mut self,
        now_us: u64,
        key: &str,
        actor: &Actor<'_>,
        before: &str,
        after: &str,
        max: usize,
    ) {
        self.next_id += 1;
        self.audit.push_front(AuditEntry {
            id: format!("{}-{}", now_us / 1000, self.next_id),
            at_us: now_us,
            key: key.to_owned(),
            action: actor.action.to_owned(),
            before: before.to_owned(),
            after: after.to_owned(),
            actor: actor.who.to_owned(),
            version: self.version,
        });
        self.audit.truncate(max);
    }
}

pub struct MemoryFlags {
    memory: Arc<Memory>,
    sets: PerTenant<HashMap<String, MemSet>>,
    max_audit: usize,
}

impl MemoryFlags {
    pub fn new(memory: &Arc<Memory>, max_audit: usize) -> Arc<Self> {
        Arc::new(Self {
            memory: memory.clone(),
            sets: PerTenant::default(),
            max_audit,
        })
    }
}

#[async_trait]
impl Store for MemoryFlags {
    async fn versions(&self, tenant: &Tenant) -> Result<Vec<(String, u64)>, StoreError> {
        Ok(self.sets.with(tenant, |sets| {
            sets.iter().map(|(n, s)| (n.clone(), s.version)).collect()
        }))
    }

    async fn load(&self, tenant: &Tenant, set: &str) -> Result<Option<StoredSet>, StoreError> {
        Ok(self.sets.with(tenant, |sets| {
            sets.get(set).map(|s| StoredSet {
                name: set.to_owned(),
                version: s.version,
                meta: s.meta.clone(),
                flags: s
                    .flags
                    .iter()
                    .map(|(key, (definition, version))| StoredFlag {
                        key: key.clone(),
                        definition: definition.clone(),
                        version: *version,
                    })
                    .collect(),
                source_sha: s.source_sha.clone(),
            })
        }))
    }

    async fn get(
        &self,
        tenant: &Tenant,
        set: &str,
        key: &str,
    ) -> Result<Option<StoredFlag>, StoreError> {
        Ok(self.sets.with(tenant, |sets| {
            let (definition, version) = sets.get(set)?.flags.get(key)?;
            Some(StoredFlag {
                key: key.to_owned(),
                definition: definition.clone(),
                version: *version,
            })
        }))
    }

    async fn write(
        &self,
        tenant: &Tenant,
        set: &str,
        key: &str,
        write: Write,
        expected: Option<u64>,
        actor: Actor<'_>,
    ) -> Result<WriteOutcome, StoreError> {
        let now = self.memory.now_us();
        Ok(self.sets.with(tenant, |sets| {
            let s = sets.entry(set.to_owned()).or_default();
            let (before, current) = s.flags.get(key).cloned().unwrap_or_default();
            let refused = WriteOutcome {
                written: false,
                version: current,
                set_version: s.version,
            };
            if expected.is_some_and(|e| e != current) {
                return refused;
            }
            if matches!(write, Write::Delete) && current == 0 {
                return refused;
            }
            s.version += 1;
            let (after, version) = match write {
                Write::Put(definition) => {
                    s.flags
                        .insert(key.to_owned(), (definition.clone(), s.version));
                    (definition, s.version)
                }
                Write::Delete => {
                    s.flags.remove(key);
                    (String::new(), 0)
                }
            };
            s.record(now, key, &actor, &before, &after, self.max_audit);
            WriteOutcome {
                written: true,
                version,
                set_version: s.version,
            }
        }))
    }

    async fn import(
        &self,
        tenant: &Tenant,
        set: &str,
        meta: &str,
        flags: &[(String, String)],
        replace: bool,
        source_sha: Option<&str>,
        actor: Actor<'_>,
    ) -> Result<(u64, Vec<(String, ChangeType)>), StoreError> {
        let now = self.memory.now_us();
        Ok(self.sets.with(tenant, |sets| {
            let s = sets.entry(set.to_owned()).or_default();
            let mut changed = Vec::new();
            for (key, definition) in flags {
                match s.flags.get(key) {
                    None => changed.push((key.clone(), ChangeType::Write)),
                    Some((d, _)) if d != definition => {
                        changed.push((key.clone(), ChangeType::Update))
                    }
                    Some(_) => {}
                }
            }
            if replace {
                for key in s.flags.keys() {
                    if !flags.iter().any(|(k, _)| k == key) {
                        changed.push((key.clone(), ChangeType::Delete));
                    }
                }
            }
            if let Some(sha) = source_sha {
                s.source_sha = Some(sha.to_owned());
            }
            if changed.is_empty() && s.meta == meta {
                return (s.version, changed);
            }
            s.version += 1;
            s.meta = meta.to_owned();
            for (key, kind) in &changed {
                let before = s.flags.get(key).map(|(d, _)| d.clone()).unwrap_or_default();
                let after = match kind {
                    ChangeType::Delete => {
                        s.flags.remove(key);
                        String::new()
                    }
                    _ => {
                        let definition = flags
                            .iter()
                            .find(|(k, _)| k == key)
                            .map(|(_, d)| d.clone())
                            .unwrap_or_default();
                        s.flags.insert(key.clone(), (definition.clone(), s.version));
                        definition
                    }
                };
                s.record(now, key, &actor, &before, &after, self.max_audit);
            }
            (s.version, changed)
        }))
    }

    async fn audit(
        &self,
        tenant: &Tenant,
        set: &str,
        limit: usize,
        before: Option<&str>,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        Ok(self.sets.with(tenant, |sets| {
            let Some(s) = sets.get(set) else {
                return Vec::new();
            };
            let older = s
                .audit
                .iter()
                .skip_while(|e| before.is_some_and(|b| e.id != b))
                .skip(usize::from(before.is_some()));
            older.take(limit).cloned().collect()
        }))
    }

    fn notices(&self) -> Option<mpsc::Receiver<(String, String)>> {
        None
    }
}
