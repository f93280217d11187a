//! Sessions: what a session is and how tokens look. `settings.rs` bounds
//! requests; `grpc.rs` converts the wire; `store.rs` is what the memory and
//! Redis stores implement.
//!
//! A session token is `<user tag><secret>`: 16 hex digits naming the user's
//! hash slot (the first 8 bytes of SHA-256 of the user id, not the id
//! itself), then 256 random bits. The store keeps only SHA-256 of the token,
//! so a Redis dump holds no live token. The tag lets a script find the
//! session and the user's index in one slot, so create + index + eviction
//! run as one script even on Redis Cluster.
//!
//! One-time tokens are 256 random bits, stored by their SHA-256 too.

mod grpc;
mod memory;
mod redis;
pub mod settings;
pub mod store;

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

pub use settings::Settings;

use crate::keys::Space;
use crate::random;
use crate::registry::{Module, RegisterError, Registrar};
use crate::validate::FieldViolation;

/// Sessions and their user index, tagged by the user's slot tag.
pub const SESSION_SPACE: Space = Space::expiring("s");
/// One-time tokens, tagged by the token's hash.
pub const ONE_TIME_SPACE: Space = Space::expiring("ot");

pub struct Service;

impl Module for Service {
    const NAME: &'static str = "session";
    type Settings = Settings;
    const SPACES: &'static [Space] = &[SESSION_SPACE, ONE_TIME_SPACE];

    fn register(settings: &Settings, registrar: &mut Registrar<'_>) -> Result<(), RegisterError> {
        let store = store::build(registrar.backend());
        registrar.add(grpc::Handler::new(store, settings.clone()));
        Ok(())
    }
}

const USER_TAG_HEX: usize = 16;
const SECRET_BYTES: usize = 32;
/// Length of a session token.
pub const SESSION_TOKEN_LEN: usize = USER_TAG_HEX + SECRET_BYTES * 2;
/// Length of a one-time token.
pub const ONE_TIME_TOKEN_LEN: usize = SECRET_BYTES * 2;
pub const MAX_USER_ID_BYTES: usize = 256;
pub const MAX_CLIENT_IP_BYTES: usize = 64;
pub const MAX_USER_AGENT_BYTES: usize = 512;
pub const MAX_PURPOSE_BYTES: usize = 64;
pub const MAX_SUBJECT_BYTES: usize = 1024;

/// Where a token's session lives: the user's slot tag and the token's hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRef {
    pub user_tag: String,
    pub hash: String,
}

pub fn user_tag(user_id: &str) -> String {
    let digest = Sha256::digest(user_id.as_bytes());
    hex::encode(&digest[..USER_TAG_HEX / 2])
}

pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new session token for `user_id`, and where it will live.
pub fn new_session_token(user_id: &str) -> Result<(String, TokenRef), getrandom::Error> {
    let tag = user_tag(user_id);
    let token = format!("{tag}{}", random::hex(SECRET_BYTES)?);
    let hash = token_hash(&token);
    Ok((
        token,
        TokenRef {
            user_tag: tag,
            hash,
        },
    ))
}

/// A new token for the session behind `old`: the same user tag, so the
/// session stays in its user's slot, and a new secret.
pub fn rotated_token(old: &TokenRef) -> Result<(String, TokenRef), getrandom::Error> {
    let token = format!("{}{}", old.user_tag, random::hex(SECRET_BYTES)?);
    let hash = token_hash(&token);
    Ok((
        token,
        TokenRef {
            user_tag: old.user_tag.clone(),
            hash,
        },
    ))
}

/// A new one-time token and its hash.
pub fn new_one_time_token() -> Result<(String, String), getrandom::Error> {
    let token = random::hex(SECRET_BYTES)?;
    let hash = token_hash(&token);
    Ok((token, hash))
}

/// A public session id: 128 random bits.
pub fn new_session_id() -> Result<String, getrandom::Error> {
    random::hex(16)
}

/// Reads a session token a caller sent: malformed ones never reach a store.
pub fn parse_session_token(token: &str, field: &str) -> Result<TokenRef, FieldViolation> {
    if token.is_empty() {
        return Err(FieldViolation::new(field, "must not be empty"));
    }
    if !random::is_hex(token, SESSION_TOKEN_LEN) {
        return Err(FieldViolation::new(
            field,
            "is not a session token (Create or Rotate issues them)",
        ));
    }
    Ok(TokenRef {
        user_tag: token[..USER_TAG_HEX].to_owned(),
        hash: token_hash(token),
    })
}

pub fn parse_one_time_token(token: &str, field: &str) -> Result<String, FieldViolation> {
    if !random::is_hex(token, ONE_TIME_TOKEN_LEN) {
        return Err(FieldViolation::new(
            field,
            "is not a one-time token (IssueOneTimeToken issues them)",
        ));
    }
    Ok(token_hash(token))
}

/// A session as stored. Times are microseconds on the store's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub session_id: String,
    pub user_id: String,
    pub data: BTreeMap<String, String>,
    pub version: u64,
    pub created_us: u64,
    pub last_seen_us: u64,
    pub idle_us: u64,
    pub absolute_at_us: u64,
    pub client_ip: String,
    pub user_agent: String,
}

impl SessionRecord {
    /// The idle expiry, never past the absolute one.
    pub fn expires_at_us(&self) -> u64 {
        (self.last_seen_us + self.idle_us).min(self.absolute_at_us)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnLimit {
    EvictOldest,
    Reject,
}

/// A validated CreateSession.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub token: TokenRef,
    pub session_id: String,
    pub user_id: String,
    pub data: BTreeMap<String, String>,
    pub idle_us: u64,
    pub absolute_us: u64,
    pub max_sessions: u32,
    pub on_limit: OnLimit,
    pub client_ip: String,
    pub user_agent: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOutcome {
    Created {
        session: SessionRecord,
        evicted_session_ids: Vec<String>,
    },
    LimitReached,
}

#[derive(Debug, Clone)]
pub enum DataUpdate {
    Merge {
        set: BTreeMap<String, String>,
        remove: Vec<String>,
    },
    Replace(BTreeMap<String, String>),
}

impl DataUpdate {
    pub fn apply(&self, data: &mut BTreeMap<String, String>) {
        match self {
            DataUpdate::Merge { set, remove } => {
                for key in remove {
                    data.remove(key);
                }
                data.extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            DataUpdate::Replace(new) => *data = new.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateOutcome {
    Updated(SessionRecord),
    VersionMismatch(SessionRecord),
    /// The merged data would exceed `session.max_data_bytes`.
    TooLarge,
}

/// Size of session data as bounded: keys and values together.
pub fn data_bytes(data: &BTreeMap<String, String>) -> usize {
    data.iter().map(|(k, v)| k.len() + v.len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_carry_the_user_tag_and_parse_back() {
        let (token, reference) = new_session_token("alice").unwrap();
        assert_eq!(token.len(), SESSION_TOKEN_LEN);
        assert!(token.starts_with(&user_tag("alice")));
        assert_eq!(parse_session_token(&token, "token").unwrap(), reference);
        assert_ne!(reference.hash, token, "only the hash is stored");
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let (token, _) = new_session_token("alice").unwrap();
        assert!(parse_session_token("", "token").is_err());
        assert!(parse_session_token(&token[1..], "token").is_err());
        assert!(parse_session_token(&token.to_uppercase(), "token").is_err());
        assert!(parse_session_token(&format!("{}g", &token[1..]), "token").is_err());
    }

    #[test]
    fn merge_sets_and_removes_keys() {
        let mut data = BTreeMap::from([("a".into(), "1".into()), ("b".into(), "2".into())]);
        DataUpdate::Merge {
            set: BTreeMap::from([("c".into(), "3".into())]),
            remove: vec!["a".into()],
        }
        .apply(&mut data);
        assert_eq!(
            data,
            BTreeMap::from([("b".into(), "2".into()), ("c".into(), "3".into())])
        );
    }
}
