//! `auth.*`: API keys, client certificates, open methods, failure limits
//! and per-tenant quotas.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use crate::keys::Tenant;
use crate::settings::{Problems, join, ms, secs};

crate::section! {
    /// One API key: the caller sends `authorization: Bearer <key>`; the
    /// configuration keeps only the key's SHA-256 (`datalayer keys new`
    /// makes one).
    pub struct KeySpec {
        /// Names the key in logs, metrics and the audit log.
        pub id: String = String::new();
        /// Lower-case hex SHA-256 of the key (64 characters).
        pub sha256: String = String::new();
        /// The tenant the key acts as: the namespace of every key its calls
        /// read and write.
        pub tenant: String = "default".to_owned();
        /// Methods it may call: `package.Service/Method` patterns where `*`
        /// matches anything (`*`, `datalayer.cache.v1.CacheService/*`,
        /// `*/Get*`), or `read` (every method that only reads), or
        /// `read:<service pattern>`.
        pub allow: Vec<String> = vec!["*".to_owned()];
        /// When the key stops working (RFC 3339, e.g.
        /// `2027-01-31T00:00:00Z`); unset: never.
        pub expires: Option<String> = None;
    }
    check = KeySpec::rules;
}

crate::section! {
    /// A client certificate (mTLS) that acts as a tenant, by its subject's
    /// common name.
    pub struct ClientSpec {
        /// The certificate subject's common name (CN).
        pub common_name: String = String::new();
        /// The tenant it acts as.
        pub tenant: String = "default".to_owned();
        /// Methods it may call (as for keys).
        pub allow: Vec<String> = vec!["*".to_owned()];
    }
    check = ClientSpec::rules;
}

crate::section! {
    /// Limits on one tenant's use of the service (per replica).
    pub struct QuotaSpec {
        /// Calls per second; 0: no limit.
        pub calls_per_second: u32 = 0, range(0, 10_000_000);
        /// Calls allowed in a burst above the rate; 0: one second's worth.
        pub burst: u32 = 0, range(0, 10_000_000);
        /// Streams (Watch, EventStream, ...) open at once; 0: no limit.
        pub max_streams: u32 = 0, range(0, 1_000_000);
    }
}

crate::section! {
    /// Who may call what: API keys (and client certificates) name a tenant
    /// and the methods it may call.
    pub struct AuthSettings {
        /// Refuse calls that carry no valid key or client certificate
        /// (except `auth.open`). False: such calls act as `keys.namespace`
        /// with every permission (the service says so at start-up).
        pub required: bool = false;
        /// API keys (several per tenant: rotate by adding the new key, then
        /// removing the old).
        pub keys: Vec<KeySpec> = Vec::new();
        /// More keys, in a YAML, JSON or TOML file with a `keys:` list (a
        /// mounted Secret); re-read when it changes and on SIGHUP.
        pub keys_file: Option<PathBuf> = None;
        /// How often `auth.keys_file` is checked for changes.
        pub reload_interval: Duration = secs(1), range(ms(100), secs(300));
        /// Methods anyone may call without a key (patterns as in `allow`);
        /// health stays open for probes by default.
        pub open: Vec<String> = vec!["grpc.health.v1.Health/*".to_owned()];
        /// Client certificates that act as tenants (with
        /// `server.tls.client_ca_file`).
        pub clients: Vec<ClientSpec> = Vec::new();
        /// Failed authentications one peer address may make per
        /// `auth.failure_window`; past it, every call from that address is
        /// refused until the window ends.
        pub max_failures: u32 = 10, range(1, 1_000_000);
        /// The window of `auth.max_failures`.
        pub failure_window: Duration = secs(60), range(secs(1), secs(86_400));
        /// Quotas by tenant.
        pub quotas: BTreeMap<String, QuotaSpec> = BTreeMap::new();
        /// The quota of a tenant not in `auth.quotas`.
        pub default_quota: QuotaSpec = QuotaSpec::default();
    }
    check = AuthSettings::rules;
}

fn tenant_rule(tenant: &str, path: &str, problems: &mut Problems) {
    if let Err(e) = Tenant::parse(tenant) {
        problems.push(join(path, "tenant"), e);
    }
}

fn allow_rule(allow: &[String], path: &str, problems: &mut Problems) {
    for (i, pattern) in allow.iter().enumerate() {
        if let Err(e) = crate::access::Pattern::parse(pattern) {
            problems.push(format!("{}[{i}]", join(path, "allow")), e);
        }
    }
}

impl KeySpec {
    fn rules(&self, path: &str, problems: &mut Problems) {
        if self.id.is_empty() || self.id.len() > 64 || self.id.chars().any(char::is_control) {
            problems.push(join(path, "id"), "must be 1 to 64 characters");
        }
        if !crate::random::is_hex(&self.sha256, 64) {
            problems.push(
                join(path, "sha256"),
                "must be the key's SHA-256 as 64 lower-case hex characters (`datalayer keys new` prints it), never the key itself",
            );
        }
        tenant_rule(&self.tenant, path, problems);
        allow_rule(&self.allow, path, problems);
        if let Some(at) = &self.expires
            && humantime::parse_rfc3339_weak(at).is_err()
        {
            problems.push(
                join(path, "expires"),
                format!("must be an RFC 3339 time such as 2027-01-31T00:00:00Z, got `{at}`"),
            );
        }
    }
}

impl ClientSpec {
    fn rules(&self, path: &str, problems: &mut Problems) {
        if self.common_name.is_empty() {
            problems.push(join(path, "common_name"), "must not be empty");
        }
        tenant_rule(&self.tenant, path, problems);
        allow_rule(&self.allow, path, problems);
    }
}

impl AuthSettings {
    fn rules(&self, path: &str, problems: &mut Problems) {
        let mut seen = std::collections::BTreeSet::new();
        for (i, key) in self.keys.iter().enumerate() {
            if !key.id.is_empty() && !seen.insert(key.id.as_str()) {
                problems.push(
                    format!("{}[{i}].id", join(path, "keys")),
                    format!("`{}` names two keys", key.id),
                );
            }
        }
        for (i, pattern) in self.open.iter().enumerate() {
            if let Err(e) = crate::access::Pattern::parse(pattern) {
                problems.push(format!("{}[{i}]", join(path, "open")), e);
            }
        }
        for tenant in self.quotas.keys() {
            if let Err(e) = Tenant::parse(tenant) {
                problems.push(join(&join(path, "quotas"), tenant), e);
            }
        }
    }

    /// The quota of `tenant`.
    pub fn quota(&self, tenant: &Tenant) -> &QuotaSpec {
        self.quotas
            .get(tenant.as_str())
            .unwrap_or(&self.default_quota)
    }
}
