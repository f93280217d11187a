//! Sessions: what a session is, how tokens look, and request bounds.
//!
//! A session token is `<user tag><secret>`: 16 hex digits naming the user's
//! hash slot (the first 8 bytes of SHA-256 of the user id, not the id
//! itself), then 256 random bits. The store keeps only SHA-256 of the token,
//! so a Redis dump holds no live token. The tag lets a script find the
//! session and the user's index in one slot, so create + index + eviction
//! run as one script even on Redis Cluster.
//!
//! One-time tokens are 256 random bits, stored by their SHA-256 too.

use std::{collections::BTreeMap, time::Duration};

use sha2::{Digest, Sha256};

use crate::error::FieldViolation;

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

fn random_hex(bytes: usize) -> Result<String, getrandom::Error> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf)?;
    Ok(hex::encode(buf))
}

/// A new session token for `user_id`, and where it will live.
pub fn new_session_token(user_id: &str) -> Result<(String, TokenRef), getrandom::Error> {
    let tag = user_tag(user_id);
    let token = format!("{tag}{}", random_hex(SECRET_BYTES)?);
    let hash = token_hash(&token);
    Ok((
        token,
        TokenRef {
            user_tag: tag,
            hash,
        },
    ))
}

/// A new one-time token and its hash.
pub fn new_one_time_token() -> Result<(String, String), getrandom::Error> {
    let token = random_hex(SECRET_BYTES)?;
    let hash = token_hash(&token);
    Ok((token, hash))
}

/// A public session id: 128 random bits.
pub fn new_session_id() -> Result<String, getrandom::Error> {
    random_hex(16)
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Reads a session token a caller sent: malformed ones never reach a store.
pub fn parse_session_token(token: &str, field: &str) -> Result<TokenRef, FieldViolation> {
    if token.is_empty() {
        return Err(FieldViolation::new(field, "must not be empty"));
    }
    if token.len() != SESSION_TOKEN_LEN || !is_lower_hex(token) {
        return Err(FieldViolation::new(
            field,
            "is not a session token (CreateSession or RotateSession issues them)",
        ));
    }
    Ok(TokenRef {
        user_tag: token[..USER_TAG_HEX].to_owned(),
        hash: token_hash(token),
    })
}

pub fn parse_one_time_token(token: &str, field: &str) -> Result<String, FieldViolation> {
    if token.len() != ONE_TIME_TOKEN_LEN || !is_lower_hex(token) {
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

/// Limits from configuration.
#[derive(Debug, Clone)]
pub struct Bounds {
    pub max_data_bytes: usize,
    pub default_idle_ttl: Duration,
    pub default_absolute_ttl: Duration,
    pub max_absolute_ttl: Duration,
    pub max_sessions_per_user: u32,
    pub max_one_time_ttl: Duration,
}

fn text(value: &str, field: &str, min: usize, max: usize) -> Result<(), FieldViolation> {
    if value.len() < min || value.len() > max || value.chars().any(char::is_control) {
        let what = if min == 0 {
            format!("must be at most {max} bytes")
        } else {
            format!("must be {min} to {max} bytes")
        };
        return Err(FieldViolation::new(
            field,
            format!("{what} without control characters"),
        ));
    }
    Ok(())
}

impl Bounds {
    pub fn user_id(&self, user_id: &str, field: &str) -> Result<(), FieldViolation> {
        text(user_id, field, 1, MAX_USER_ID_BYTES)
    }

    pub fn data(&self, data: &BTreeMap<String, String>, field: &str) -> Result<(), FieldViolation> {
        let size = data_bytes(data);
        if size > self.max_data_bytes {
            return Err(FieldViolation::new(
                field,
                format!(
                    "keys and values must total at most {} bytes (session.max_data_bytes), got {size}",
                    self.max_data_bytes
                ),
            ));
        }
        if data.keys().any(|k| k.is_empty()) {
            return Err(FieldViolation::new(field, "keys must not be empty"));
        }
        Ok(())
    }

    pub fn client_ip(&self, ip: &str) -> Result<(), FieldViolation> {
        text(ip, "client_ip", 0, MAX_CLIENT_IP_BYTES)
    }

    pub fn user_agent(&self, ua: &str) -> Result<(), FieldViolation> {
        text(ua, "user_agent", 0, MAX_USER_AGENT_BYTES)
    }

    pub fn purpose(&self, purpose: &str) -> Result<(), FieldViolation> {
        text(purpose, "purpose", 1, MAX_PURPOSE_BYTES)
    }

    pub fn subject(&self, subject: &str) -> Result<(), FieldViolation> {
        text(subject, "subject", 1, MAX_SUBJECT_BYTES)
    }

    /// A duration in microseconds between 1 ms and `max`, or `default`.
    pub fn ttl(
        &self,
        value: Option<Duration>,
        default: Option<Duration>,
        max: Duration,
        max_key: &str,
        field: &str,
    ) -> Result<u64, FieldViolation> {
        let Some(ttl) = value.or(default) else {
            return Err(FieldViolation::new(field, "is required"));
        };
        if ttl < Duration::from_millis(1) || ttl > max {
            return Err(FieldViolation::new(
                field,
                format!(
                    "must be between 1ms and {} ({max_key})",
                    humantime::format_duration(max)
                ),
            ));
        }
        Ok(ttl.as_micros() as u64)
    }
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
