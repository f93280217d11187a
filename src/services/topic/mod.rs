//! Topics: publish/subscribe on Redis Streams. `settings.rs` bounds
//! requests; `grpc.rs` converts the wire (`grpc/subscribe.rs` is the
//! stream); `store.rs` is what the memory and Redis stores implement;
//! `hub.rs` is the one reader per topic per replica that feeds every local
//! fan-out subscriber.
//!
//! A topic is one stream key, tagged by the topic, with a TTL of
//! `topic.max_age` renewed by every publish: bounded in length and age,
//! and gone when idle. Message ids are the stream's (`<ms>-<seq>`), so a
//! subscriber that reconnects with the last id it saw gets exactly what
//! followed.

mod grpc;
mod hub;
mod memory;
mod redis;
pub mod settings;
pub mod store;

use std::collections::BTreeMap;
use std::fmt;

pub use settings::Settings;

use crate::keys::Space;
use crate::registry::{Module, RegisterError, Registrar};

/// Topic streams (with their consumer groups), tagged by the topic.
pub const SPACE: Space = Space::expiring("tp");

pub struct Service;

impl Module for Service {
    const NAME: &'static str = "topic";
    type Settings = Settings;
    const SPACES: &'static [Space] = &[SPACE];

    fn register(settings: &Settings, registrar: &mut Registrar<'_>) -> Result<(), RegisterError> {
        let store = store::build(registrar.backend());
        registrar.add(grpc::Handler::new(store, settings.clone()));
        Ok(())
    }
}

/// A message id: milliseconds and a sequence, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MsgId(pub u64, pub u64);

impl MsgId {
    pub const ZERO: MsgId = MsgId(0, 0);

    /// `<ms>-<seq>` (or `<ms>`, meaning `<ms>-0`).
    pub fn parse(text: &str) -> Option<Self> {
        let (ms, seq) = text.split_once('-').unwrap_or((text, "0"));
        let digits =
            |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return None;
        }
        Some(MsgId(ms.parse().ok()?, seq.parse().ok()?))
    }

    /// The last id before the first one at or after `ms`.
    pub fn before_time(ms: u64) -> Self {
        match ms {
            0 => MsgId::ZERO,
            ms => MsgId(ms - 1, u64::MAX),
        }
    }
}

impl fmt::Display for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// A message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMsg {
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}

/// A message as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    pub id: MsgId,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
    /// Group reads: how many times it was delivered (1 the first time).
    pub deliveries: u32,
}

/// How long and how much a topic keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub max_len: u64,
    pub max_age_ms: u64,
}

/// Messages after an id, and the newest id retention removed (what a
/// replay that started before it missed).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Read {
    pub messages: Vec<Msg>,
    pub max_deleted: MsgId,
    pub first_kept: Option<MsgId>,
}

/// Where a group member reads from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRead {
    pub group: String,
    pub consumer: String,
    /// Where a group made by this read starts (after this id).
    pub start: MsgId,
    /// Most messages the member holds unacknowledged.
    pub count: usize,
    /// Pending messages idle this long go to this member.
    pub claim_idle_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupStats {
    pub name: String,
    pub pending: u64,
    pub consumers: u64,
    pub last_delivered: MsgId,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stats {
    pub length: u64,
    pub first: Option<MsgId>,
    pub last: Option<MsgId>,
    pub groups: Vec<GroupStats>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_print_and_order() {
        assert_eq!(MsgId::parse("5-3"), Some(MsgId(5, 3)));
        assert_eq!(MsgId::parse("7"), Some(MsgId(7, 0)));
        assert_eq!(MsgId(5, 3).to_string(), "5-3");
        for bad in ["", "-", "a-1", "1-", "1-2-3", "99999999999999999999999"] {
            assert_eq!(MsgId::parse(bad), None, "{bad}");
        }
        assert!(MsgId(5, 3) < MsgId(5, 4) && MsgId(5, 9) < MsgId(6, 0));
        assert!(MsgId::before_time(10) < MsgId(10, 0));
        assert!(MsgId::before_time(10) > MsgId(9, 999));
    }
}
