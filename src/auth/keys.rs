//! API keys as the service holds them: the SHA-256 of each, its tenant,
//! what it may call and when it expires. Keys come from `auth.keys` and
//! from `auth.keys_file`, which is re-read when it changes.

use std::{path::Path, sync::Arc, time::SystemTime};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::settings::KeySpec;
use crate::access::Allow;
use crate::keys::Tenant;
use crate::settings::{Problems, Setting};

/// Keys start with this, so a leaked one is recognisable (secret scanners).
pub const KEY_PREFIX: &str = "dlk_";

/// A new random key (256 bits) and its SHA-256, hex.
pub fn generate() -> Result<(String, String), getrandom::Error> {
    let key = format!("{KEY_PREFIX}{}", crate::random::hex(32)?);
    let sha = sha256_hex(&key);
    Ok((key, sha))
}

pub fn sha256_hex(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// One usable key.
#[derive(Debug)]
pub struct Key {
    pub id: Arc<str>,
    digest: [u8; 32],
    pub tenant: Tenant,
    pub allow: Allow,
    pub expires: Option<SystemTime>,
}

/// Every key in force.
#[derive(Debug, Default)]
pub struct KeySet(Vec<Key>);

impl KeySet {
    /// From validated specs (one that does not convert is skipped).
    pub fn new(specs: &[KeySpec]) -> Self {
        Self(specs.iter().filter_map(Key::from_spec).collect())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The key whose SHA-256 is that of `presented`. Every stored digest is
    /// compared, in constant time, so timing tells nothing about which
    /// bytes matched.
    pub fn find(&self, presented: &str) -> Option<&Key> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for key in &self.0 {
            if bool::from(key.digest.ct_eq(&digest)) {
                found = Some(key);
            }
        }
        found
    }
}

impl Key {
    fn from_spec(spec: &KeySpec) -> Option<Self> {
        let mut digest = [0u8; 32];
        hex::decode_to_slice(&spec.sha256, &mut digest).ok()?;
        Some(Self {
            id: Arc::from(spec.id.as_str()),
            digest,
            tenant: Tenant::parse(&spec.tenant).ok()?,
            allow: Allow::new(&spec.allow),
            expires: match &spec.expires {
                Some(at) => Some(humantime::parse_rfc3339_weak(at).ok()?),
                None => None,
            },
        })
    }
}

/// The keys of `auth.keys_file`: a document with a `keys:` list.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default, deserialize_with = "crate::settings::de")]
    keys: Vec<KeySpec>,
}

/// Reads `auth.keys_file`; every problem names its entry.
pub fn read_file(path: &Path) -> Result<Vec<KeySpec>, String> {
    let loaded = config::Config::builder()
        .add_source(config::File::from(path).required(true))
        .build()
        .and_then(|c| c.try_deserialize::<KeysFile>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut problems = Problems::default();
    loaded.keys.check("keys", &mut problems);
    if problems.is_empty() {
        Ok(loaded.keys)
    } else {
        Err(problems
            .0
            .iter()
            .map(|p| format!("{}: `{}`: {}", path.display(), p.key, p.message))
            .collect::<Vec<_>>()
            .join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str, key: &str) -> KeySpec {
        KeySpec {
            id: id.into(),
            sha256: sha256_hex(key),
            tenant: "t1".into(),
            allow: vec!["*".into()],
            expires: None,
        }
    }

    #[test]
    fn keys_are_found_by_their_hash_only() {
        let (key, sha) = generate().unwrap();
        assert!(key.starts_with(KEY_PREFIX) && key.len() == KEY_PREFIX.len() + 64);
        assert_eq!(sha, sha256_hex(&key));
        let set = KeySet::new(&[spec("a", &key), spec("b", "other")]);
        assert_eq!(set.find(&key).map(|k| &*k.id), Some("a"));
        assert_eq!(set.find("other").map(|k| &*k.id), Some("b"));
        assert!(set.find(&sha).is_none(), "the hash is not a key");
        assert!(set.find("").is_none());
    }
}
