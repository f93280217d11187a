//! Keeping a replica's flags current: at start the configured source files
//! are imported (when their content changed) and the flag sets loaded;
//! then every change notice (Redis pub/sub) reloads its set, and a periodic
//! resync of versions catches whatever a notice missed. When the store is
//! down, evaluations go on from memory and this retries.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::Flags;
use super::model::{parse_document, parse_flag, set_meta_json};
use super::store::Actor;
use crate::keys::Tenant;
use crate::store::StoreError;

pub fn start(flags: Arc<Flags>, tenant: Tenant, shutdown: watch::Receiver<bool>) {
    if tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    tokio::spawn(run(flags, tenant, shutdown));
}

async fn run(flags: Arc<Flags>, tenant: Tenant, mut shutdown: watch::Receiver<bool>) {
    // Until the sources are in and the sets loaded, retry each second.
    loop {
        match initial(&flags, &tenant).await {
            Ok(()) => break,
            Err(e) => tracing::warn!(error = %e, "flags: the store is not ready; retrying"),
        }
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            () = stopped(&mut shutdown) => return,
        }
    }
    flags.registry.mark_ready();
    let mut notices = flags.store.notices();
    let mut tick = tokio::time::interval(flags.settings.resync_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let notice = async {
            match notices.as_mut() {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            notice = notice => match notice {
                Some((tenant, set)) => {
                    let Ok(tenant) = Tenant::parse(&tenant) else { continue };
                    let known = flags.registry.knows(&tenant);
                    if known && let Err(e) = flags.refresh(&tenant, &set).await {
                        tracing::debug!(error = %e, "flags: refresh failed; the resync will catch up");
                    }
                }
                // The listener stopped: resync alone from now on.
                None => notices = None,
            },
            _ = tick.tick() => {
                for tenant in flags.registry.tenants() {
                    if let Err(e) = flags.resync(&tenant).await {
                        tracing::debug!(error = %e, "flags: resync failed; retrying");
                    }
                }
            }
            () = stopped(&mut shutdown) => return,
        }
    }
}

/// Completes when the server begins to stop.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

async fn initial(flags: &Flags, tenant: &Tenant) -> Result<(), StoreError> {
    for source in &flags.settings.sources.0 {
        import_source(flags, tenant, &source.selector, &source.path).await?;
    }
    flags.resync(tenant).await
}

/// Imports a source file into its set when its content changed since the
/// last import. Flags that cannot be read are left out (and logged); flags
/// whose rules do not compile are kept, and answer PARSE_ERROR, as in flagd.
async fn import_source(
    flags: &Flags,
    tenant: &Tenant,
    selector: &str,
    path: &std::path::Path,
) -> Result<(), StoreError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            tracing::error!(selector, path = %path.display(), error = %e, "flags: cannot read a source; skipped");
            return Ok(());
        }
    };
    let sha = hex::encode(Sha256::digest(text.as_bytes()));
    let stored = flags.store.load(tenant, selector).await?;
    if stored.as_ref().and_then(|s| s.source_sha.as_deref()) == Some(sha.as_str()) {
        return Ok(());
    }
    let document = match parse_document(&text, &flags.settings) {
        Ok(document) => document,
        Err(problems) => {
            tracing::error!(selector, path = %path.display(), %problems, "flags: a source is not a flag set; skipped");
            return Ok(());
        }
    };
    let mut kept = Vec::new();
    for (key, value) in &document.flags {
        match parse_flag(value, &format!("flags.{key}")) {
            Ok(_) => kept.push((key.clone(), value.to_string())),
            Err(problems) => {
                tracing::warn!(selector, flag = %key, %problems, "flags: a flag of a source cannot be read; left out")
            }
        }
    }
    let meta = set_meta_json(&document.metadata, &document.evaluators);
    let actor = Actor {
        action: "import",
        who: "source file",
    };
    let (version, changed) = flags
        .store
        .import(tenant, selector, &meta, &kept, true, Some(&sha), actor)
        .await?;
    tracing::info!(
        selector,
        path = %path.display(),
        flags = kept.len(),
        changed = changed.len(),
        version,
        "flags: source imported"
    );
    Ok(())
}
