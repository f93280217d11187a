//! The one place that names Redis keys.
//!
//! Every key is `dl:<namespace>:<service>:{<hash tag>}:<part>...`. The hash
//! tag is the caller's key, so every key one script touches for one caller
//! lands in the same Redis Cluster slot, and the namespace lets tenants share
//! a Redis without touching callers.

/// The services that own keys; the short names keep keys small.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    RateLimit,
    /// Cache entries and their leases, tagged by the caller's key.
    Cache,
    /// Cache tag indexes, tagged by the tag (a different slot than entries).
    CacheTag,
    /// Sessions and their user index, tagged by the user's slot tag.
    Session,
    /// One-time tokens, tagged by the token's hash.
    OneTime,
}

impl Service {
    fn as_str(self) -> &'static str {
        match self {
            Service::RateLimit => "rl",
            Service::Cache => "c",
            Service::CacheTag => "ct",
            Service::Session => "s",
            Service::OneTime => "ot",
        }
    }
}

#[derive(Debug, Clone)]
pub struct KeyBuilder {
    prefix: String,
}

impl KeyBuilder {
    pub fn new(namespace: &str) -> Self {
        Self {
            prefix: format!("dl:{namespace}:"),
        }
    }

    /// `dl:<ns>:<service>:{<tag>}:<parts joined by ':'>`.
    ///
    /// `{`, `}` and `%` in `tag` are percent-encoded: a caller's key can never
    /// move the hash tag, and two different caller keys never share a key.
    pub fn key(&self, service: Service, tag: &str, parts: &[&str]) -> String {
        let mut key = String::with_capacity(
            self.prefix.len() + 8 + tag.len() + parts.iter().map(|p| p.len() + 1).sum::<usize>(),
        );
        key.push_str(&self.prefix);
        key.push_str(service.as_str());
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_namespace_service_and_hash_tag() {
        let keys = KeyBuilder::new("tenant1");
        assert_eq!(
            keys.key(Service::RateLimit, "user:42", &["p=auth", "gcra"]),
            "dl:tenant1:rl:{user:42}:p=auth:gcra"
        );
    }

    #[test]
    fn braces_in_caller_keys_cannot_move_the_hash_tag() {
        let keys = KeyBuilder::new("ns");
        let key = keys.key(Service::RateLimit, "a}b{c%", &["x"]);
        assert_eq!(key, "dl:ns:rl:{a%7Db%7Bc%25}:x");
        let open = key.find('{').unwrap();
        let close = key[open..].find('}').unwrap() + open;
        assert_eq!(&key[open + 1..close], "a%7Db%7Bc%25");
        // Distinct caller keys stay distinct after encoding.
        assert_ne!(
            keys.key(Service::RateLimit, "a}", &[]),
            keys.key(Service::RateLimit, "a%7D", &[])
        );
    }
}
