//! Who may call what. Every request passes [`Auth::authorize`] in the
//! listener ([`crate::server`]) before any service sees it:
//!
//! * `authorization: Bearer <key>`: the key's SHA-256 is looked up among
//!   the configured keys ([`keys`]); a missing, unknown, malformed or
//!   expired key is `UNAUTHENTICATED`, a method the key may not call
//!   `PERMISSION_DENIED` naming the method ([`crate::access`]);
//! * else a client certificate (mTLS) whose common name is configured;
//! * else the call is anonymous: allowed for `auth.open` methods (health),
//!   and for everything when `auth.required` is false (the open mode,
//!   announced at start-up).
//!
//! The answer is a [`Principal`]: its tenant becomes the namespace of every
//! key the call touches, so one tenant cannot name another's data.
//! Failed authentications are counted by reason, and a peer address with
//! too many in `auth.failure_window` is refused outright until the window
//! ends, so guessing keys is slow and visible. Quotas ([`quota`]) bound each
//! tenant's calls per second and open streams.

pub mod keys;
pub mod quota;
pub mod settings;

use std::{
    collections::HashMap,
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use arc_swap::ArcSwap;

pub use settings::AuthSettings;

use self::keys::KeySet;
use self::quota::{Quotas, StreamSlot};
use crate::access::Allow;
pub use crate::access::Principal;
use crate::keys::Tenant;

/// Why a call was refused before it reached a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    Unauthenticated {
        message: String,
        reason: &'static str,
    },
    PermissionDenied(String),
    /// A quota: retry after this long.
    Throttled {
        message: String,
        retry_after: Duration,
    },
}

/// What the listener knows of a call.
pub struct Caller<'a> {
    pub service: &'a str,
    pub method: &'a str,
    /// The `authorization` header, if sent.
    pub authorization: Option<&'a [u8]>,
    pub peer: Option<IpAddr>,
    /// The verified client certificate's common name (mTLS).
    pub cert_common_name: Option<&'a str>,
    /// A server-streaming (or bidi) call: counts against `max_streams`.
    pub streaming: bool,
}

struct Client {
    common_name: String,
    tenant: Tenant,
    allow: Allow,
}

/// The authorizer of one server.
pub struct Auth {
    required: bool,
    default_tenant: Tenant,
    inline: Vec<settings::KeySpec>,
    keys_file: Option<PathBuf>,
    keys: ArcSwap<KeySet>,
    /// A hash of the keys file as last read, to notice changes.
    file_digest: Mutex<Option<String>>,
    open: Allow,
    clients: Vec<Client>,
    max_failures: u32,
    failure_window: Duration,
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
    quotas: Quotas,
}

/// A call that may proceed, and the stream slot it holds (if streaming).
pub struct Admitted {
    pub principal: Principal,
    pub stream_slot: Option<StreamSlot>,
}

impl Auth {
    /// From validated settings; reads `auth.keys_file` once (an error here
    /// stops start-up: a key file that cannot be read is a deployment bug).
    pub fn new(settings: &AuthSettings, default_tenant: Tenant) -> Result<Arc<Self>, String> {
        let clients = settings
            .clients
            .iter()
            .filter_map(|c| {
                Some(Client {
                    common_name: c.common_name.clone(),
                    tenant: Tenant::parse(&c.tenant).ok()?,
                    allow: Allow::new(&c.allow),
                })
            })
            .collect();
        let auth = Arc::new(Self {
            required: settings.required,
            default_tenant,
            inline: settings.keys.clone(),
            keys_file: settings.keys_file.clone(),
            keys: ArcSwap::from_pointee(KeySet::new(&settings.keys)),
            file_digest: Mutex::new(None),
            open: Allow::new(&settings.open),
            clients,
            max_failures: settings.max_failures,
            failure_window: settings.failure_window,
            failures: Mutex::new(HashMap::new()),
            quotas: Quotas::new(settings),
        });
        auth.reload()?;
        Ok(auth)
    }

    /// Whether any key or client certificate is configured.
    pub fn has_credentials(&self) -> bool {
        !self.keys.load().is_empty() || !self.clients.is_empty()
    }

    pub fn required(&self) -> bool {
        self.required
    }

    /// How many keys are in force (inline and from the file).
    pub fn key_count(&self) -> usize {
        self.keys.load().len()
    }

    /// Re-reads `auth.keys_file` if it changed; answers whether it did.
    pub fn reload(&self) -> Result<bool, String> {
        let Some(path) = &self.keys_file else {
            return Ok(false);
        };
        let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let digest = keys::sha256_hex(&String::from_utf8_lossy(&text));
        let mut last = crate::store::memory::lock(&self.file_digest);
        if last.as_deref() == Some(digest.as_str()) {
            return Ok(false);
        }
        let mut specs = self.inline.clone();
        for spec in keys::read_file(path)? {
            if specs.iter().any(|s| s.id == spec.id) {
                return Err(format!(
                    "{}: key id `{}` is also in auth.keys; ids must be unique",
                    path.display(),
                    spec.id
                ));
            }
            specs.push(spec);
        }
        let set = KeySet::new(&specs);
        tracing::info!(target: "audit", event = "keys_reloaded", keys = set.len(), file = %path.display(), "API keys loaded");
        self.keys.store(Arc::new(set));
        *last = Some(digest);
        Ok(true)
    }

    /// Authenticates and authorizes one call, then applies its tenant's
    /// quota.
    pub fn authorize(&self, caller: &Caller<'_>) -> Result<Admitted, Denied> {
        // Open methods (health probes) called without credentials pass
        // even a blocked peer, and count against no quota.
        let open_call = caller.authorization.is_none()
            && caller.cert_common_name.is_none()
            && self.open.allows(caller.service, caller.method);
        if open_call {
            return Ok(Admitted {
                principal: Principal {
                    tenant: self.default_tenant.clone(),
                    id: Arc::from("anonymous"),
                },
                stream_slot: None,
            });
        }
        if let Some(peer) = caller.peer
            && let Some(wait) = self.blocked_for(peer)
        {
            return Err(self.failed(
                caller,
                "blocked",
                format!(
                    "too many failed authentications from this address; retry in {}s",
                    wait.as_secs().max(1)
                ),
            ));
        }
        let principal = self.principal(caller)?;
        let stream_slot = self
            .quotas
            .admit(&principal.tenant, caller.streaming)
            .map_err(|(message, retry_after)| Denied::Throttled {
                message,
                retry_after,
            })?;
        Ok(Admitted {
            principal,
            stream_slot,
        })
    }

    fn principal(&self, caller: &Caller<'_>) -> Result<Principal, Denied> {
        let full = || format!("{}/{}", caller.service, caller.method);
        if let Some(header) = caller.authorization {
            let Some(presented) = bearer(header) else {
                return Err(self.failed(
                    caller,
                    "malformed",
                    "the authorization header must be `Bearer <key>`".to_owned(),
                ));
            };
            let keys = self.keys.load();
            let Some(key) = keys.find(presented) else {
                return Err(self.failed(caller, "unknown", "unknown API key".to_owned()));
            };
            if key.expires.is_some_and(|at| at <= SystemTime::now()) {
                return Err(self.failed(
                    caller,
                    "expired",
                    format!("API key `{}` has expired", key.id),
                ));
            }
            if !key.allow.allows(caller.service, caller.method) {
                return Err(self.forbidden(&key.id, &full()));
            }
            return Ok(Principal {
                tenant: key.tenant.clone(),
                id: key.id.clone(),
            });
        }
        if let Some(cn) = caller.cert_common_name
            && let Some(client) = self.clients.iter().find(|c| c.common_name == cn)
        {
            let id: Arc<str> = Arc::from(format!("cert:{cn}"));
            if !client.allow.allows(caller.service, caller.method) {
                return Err(self.forbidden(&id, &full()));
            }
            return Ok(Principal {
                tenant: client.tenant.clone(),
                id,
            });
        }
        if !self.required || self.open.allows(caller.service, caller.method) {
            return Ok(Principal {
                tenant: self.default_tenant.clone(),
                id: Arc::from("anonymous"),
            });
        }
        metrics::counter!(crate::metrics::AUTH_FAILURES, "reason" => "missing").increment(1);
        Err(Denied::Unauthenticated {
            message: format!(
                "{} needs an API key: send `authorization: Bearer <key>`",
                full()
            ),
            reason: "missing",
        })
    }

    fn forbidden(&self, id: &str, method: &str) -> Denied {
        metrics::counter!(crate::metrics::AUTH_FAILURES, "reason" => "forbidden").increment(1);
        tracing::info!(target: "audit", event = "permission_denied", key = id, method, "refused");
        let who = match id.strip_prefix("cert:") {
            Some(cn) => format!("the client certificate `{cn}`"),
            None => format!("API key `{id}`"),
        };
        Denied::PermissionDenied(format!("{who} may not call {method}"))
    }

    /// Counts a failed authentication against the peer, logs it to the
    /// audit target, and answers UNAUTHENTICATED.
    fn failed(&self, caller: &Caller<'_>, reason: &'static str, message: String) -> Denied {
        metrics::counter!(crate::metrics::AUTH_FAILURES, "reason" => reason).increment(1);
        if reason != "blocked"
            && let Some(peer) = caller.peer
        {
            let now = Instant::now();
            let mut failures = crate::store::memory::lock(&self.failures);
            if failures.len() > 100_000 {
                let window = self.failure_window;
                failures.retain(|_, (since, _)| now.duration_since(*since) < window);
            }
            let entry = failures.entry(peer).or_insert((now, 0));
            if now.duration_since(entry.0) >= self.failure_window {
                *entry = (now, 0);
            }
            entry.1 += 1;
        }
        tracing::warn!(
            target: "audit",
            event = "authentication_failed",
            reason,
            peer = ?caller.peer,
            method = %format!("{}/{}", caller.service, caller.method),
            "refused"
        );
        Denied::Unauthenticated { message, reason }
    }

    /// How long `peer` stays refused, if it made too many failures.
    fn blocked_for(&self, peer: IpAddr) -> Option<Duration> {
        let failures = crate::store::memory::lock(&self.failures);
        let (since, count) = failures.get(&peer)?;
        let elapsed = since.elapsed();
        (*count >= self.max_failures && elapsed < self.failure_window)
            .then(|| self.failure_window - elapsed)
    }
}

/// The key of `Bearer <key>` (the scheme is case-insensitive).
fn bearer(header: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(header).ok()?;
    let (scheme, key) = text.split_once(' ')?;
    let key = key.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !key.is_empty() && !key.contains(' ')).then_some(key)
}

/// Re-reads `auth.keys_file` every `interval` and on SIGHUP, until
/// `stop` turns true. A file that stops parsing keeps the keys in force
/// (and says why, loudly).
pub fn spawn_reloader(
    auth: Arc<Auth>,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangup = signal(SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(interval);
        loop {
            let hup = async {
                match hangup.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = tick.tick() => {}
                () = hup => tracing::info!("SIGHUP: re-reading auth.keys_file"),
                _ = stop.wait_for(|s| *s) => return,
            }
            if let Err(e) = auth.reload() {
                metrics::counter!(crate::metrics::AUTH_RELOAD_ERRORS).increment(1);
                tracing::error!(error = %e, "auth.keys_file cannot be read; the keys in force stay");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bounded fuzz: random header bytes never panic the parser.
    #[test]
    fn random_authorization_headers_never_panic() {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 40) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|i| (x >> (i % 8 * 8)) as u8).collect();
            if x.is_multiple_of(3) {
                bytes.splice(0..0, b"Bearer ".iter().copied());
            }
            let _ = bearer(&bytes);
        }
    }

    #[test]
    fn bearer_headers_are_parsed_strictly() {
        assert_eq!(bearer(b"Bearer abc"), Some("abc"));
        assert_eq!(bearer(b"bearer abc"), Some("abc"));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"Bearer a b"), None);
        assert_eq!(bearer(b"\xff"), None);
    }
}
