//! The one place that spells Redis keys, and the tenant they belong to.
//!
//! Every key is `dl:<tenant>:<space>:{<hash tag>}:<part>...`:
//!
//! * the **tenant** comes with each call ([`crate::grpc::Ctx`]): today the
//!   configured `keys.namespace`, later the caller's API key. Nothing a
//!   caller sends can reach another tenant's keys;
//! * the **space** is a service's short name for one kind of key (`rl`,
//!   `c`, `ct`, ...), declared by the service and unique across services
//!   (a test checks every registered one);
//! * the **hash tag** is what must share a Redis Cluster slot (a caller's
//!   key, a user's tag, a queue): every key one script touches carries it.

use std::{fmt, sync::Arc};

/// A tenant: the namespace of every key a call writes. 1 to 64 characters
/// of `[A-Za-z0-9_-]`, starting with a letter or digit, so it can never
/// contain `:` or a brace, nor be `_probe` (the health probe's key).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tenant(Arc<str>);

impl Tenant {
    pub const RULE: &'static str =
        "1 to 64 characters of [A-Za-z0-9_-], starting with a letter or digit";

    pub fn parse(name: &str) -> Result<Self, String> {
        let ok = name.len() <= 64
            && name
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(Self(Arc::from(name)))
        } else {
            Err(format!("must be {}", Self::RULE))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tenant({})", self.0)
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A service's name for one kind of key. Short: it is in every key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    pub name: &'static str,
    /// Durable keys (definitions, queues) carry no TTL; every other key
    /// does (the invariant tests check it), and the start-up check warns
    /// when Redis's eviction policy could drop durable ones.
    pub durable: bool,
    /// Durable keys a caller may give a TTL of its own (state documents and
    /// counters): no TTL unless asked, a bounded one when asked.
    pub caller_ttl: bool,
}

impl Space {
    /// Keys that always carry a TTL.
    pub const fn expiring(name: &'static str) -> Self {
        Self {
            name,
            durable: false,
            caller_ttl: false,
        }
    }

    /// Keys that are data, kept until deleted.
    pub const fn durable(name: &'static str) -> Self {
        Self {
            name,
            durable: true,
            caller_ttl: false,
        }
    }

    /// Durable keys that expire only when the caller gives them a TTL.
    pub const fn durable_unless_ttl(name: &'static str) -> Self {
        Self {
            name,
            durable: true,
            caller_ttl: true,
        }
    }
}

/// `dl:<tenant>:<space>:{<tag>}:<parts joined by ':'>`.
///
/// `{`, `}` and `%` in `tag` are percent-encoded: a caller's key can never
/// move the hash tag, and two different caller keys never share a key.
pub fn key(tenant: &Tenant, space: Space, tag: &str, parts: &[&str]) -> String {
    let mut key = String::with_capacity(
        8 + tenant.0.len()
            + space.name.len()
            + tag.len()
            + parts.iter().map(|p| p.len() + 1).sum::<usize>(),
    );
    key.push_str("dl:");
    key.push_str(&tenant.0);
    key.push(':');
    key.push_str(space.name);
    key.push_str(":{");
    for c in tag.chars() {
        match c {
            '{' => key.push_str("%7B"),
            '}' => key.push_str("%7D"),
            '%' => key.push_str("%25"),
            c => key.push(c),
        }
    }
    key.push('}');
    for part in parts {
        key.push(':');
        key.push_str(part);
    }
    key
}

/// The health probe's key (no tenant can be named `_probe`): a short-lived
/// write that tells whether Redis takes writes.
pub fn probe_key(instance: &str) -> String {
    format!("dl:_probe:{{{instance}}}")
}

/// The pattern matching every key of `tenant` (for tests and operators).
pub fn tenant_pattern(tenant: &Tenant) -> String {
    format!("dl:{}:*", tenant.0)
}

crate::section! {
    /// Where keys live in Redis.
    pub struct KeySettings {
        /// Tenant namespace of every key when calls carry no tenant of their
        /// own; every key starts with `dl:<namespace>:`. 1 to 64 characters
        /// of [A-Za-z0-9_-], starting with a letter or digit.
        pub namespace: String = "default".to_owned();
    }
    check = KeySettings::rules;
}

impl KeySettings {
    fn rules(&self, path: &str, problems: &mut crate::settings::Problems) {
        if let Err(e) = Tenant::parse(&self.namespace) {
            problems.push(crate::settings::join(path, "namespace"), e);
        }
    }

    /// The configured namespace as the default tenant.
    pub fn tenant(&self) -> Result<Tenant, String> {
        Tenant::parse(&self.namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str) -> Tenant {
        Tenant::parse(name).unwrap()
    }

    #[test]
    fn keys_carry_tenant_space_and_hash_tag() {
        assert_eq!(
            key(
                &t("tenant1"),
                Space::expiring("rl"),
                "user:42",
                &["p=auth", "gcra"]
            ),
            "dl:tenant1:rl:{user:42}:p=auth:gcra"
        );
    }

    #[test]
    fn braces_in_caller_keys_cannot_move_the_hash_tag() {
        let ns = t("ns");
        let k = key(&ns, Space::expiring("rl"), "a}b{c%", &["x"]);
        assert_eq!(k, "dl:ns:rl:{a%7Db%7Bc%25}:x");
        let open = k.find('{').unwrap();
        let close = k[open..].find('}').unwrap() + open;
        assert_eq!(&k[open + 1..close], "a%7Db%7Bc%25");
        assert_ne!(
            key(&ns, Space::expiring("rl"), "a}", &[]),
            key(&ns, Space::expiring("rl"), "a%7D", &[])
        );
    }

    #[test]
    fn tenants_are_validated() {
        assert!(Tenant::parse("a-b_C9").is_ok());
        for bad in ["", "a:b", "a{b", "_probe", "-x", &"x".repeat(65)] {
            assert!(Tenant::parse(bad).is_err(), "{bad}");
        }
    }
}
