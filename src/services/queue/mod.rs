//! Job queues that never lose an accepted message. `settings.rs` bounds
//! requests; `grpc.rs` converts the wire (`grpc/consume.rs` streams,
//! `grpc/admin.rs` dead letters, pause, stats, schedules); `store.rs` is
//! what the memory and Redis stores implement; `schedule.rs` fires cron
//! schedules; `waiters.rs` wakes long-polls.
//!
//! A message moves between states, each change one atomic step of the
//! store (one Lua script on the queue's slot):
//!
//! ```text
//!  enqueue ─▶ delayed ──(due)──▶ ready ──lease──▶ leased ──ack──▶ done
//!     │          ▲                 ▲                 │
//!     │          └──(backoff)──────┴──nack / lease runs out──┘
//!     └─▶ queued behind its group's active message       └─(attempts used)─▶ dead
//! ```
//!
//! Every delivery counts an attempt, so a consumer that crashes uses one
//! up; a lease expiry is noticed by whichever replica next leases or reads
//! stats, atomically, so redelivery and dead-lettering happen once. The
//! lease token (`<attempt>-<random>`) fences a consumer whose lease ran
//! out: its ack is refused once the message was delivered again.

mod grpc;
mod memory;
pub mod push;
mod redis;
pub mod schedule;
pub mod settings;
pub mod store;
mod waiters;

use std::collections::BTreeMap;

pub use settings::Settings;

use crate::keys::Space;
use crate::registry::{Module, RegisterError, Registrar};

/// A queue's messages, lists and counters, tagged by the queue (one slot).
/// Durable; done messages and rate buckets carry a TTL.
pub const QUEUE_SPACE: Space = Space::durable_unless_ttl("q");
/// Each tenant's list of queues that have schedules.
pub const SCHEDULE_INDEX_SPACE: Space = Space::durable("qx");

/// Priorities 0 (lowest) to 9.
pub const MAX_PRIORITY: u32 = 9;

pub struct Service;

impl Module for Service {
    const NAME: &'static str = "queue";
    type Settings = Settings;
    const SPACES: &'static [Space] = &[QUEUE_SPACE, SCHEDULE_INDEX_SPACE];

    fn register(settings: &Settings, registrar: &mut Registrar<'_>) -> Result<(), RegisterError> {
        let store = store::build(registrar.backend());
        let shared = registrar.shared();
        let waiters = waiters::Waiters::new(settings.poll_interval);
        let schedules = schedule::Ticker::new(store.clone(), settings.clone(), waiters.clone());
        schedules.start(shared.tenants.to_vec(), shared.shutdown.clone());
        let destinations = push::store::build(registrar.backend());
        let signer = match &settings.push.signing_key_file {
            Some(path) => {
                Some(
                    push::sign::Signer::load(path).map_err(|message| RegisterError {
                        service: Self::NAME,
                        message,
                    })?,
                )
            }
            None => None,
        };
        let dispatcher = push::dispatch::Dispatcher::new(
            store.clone(),
            destinations.clone(),
            settings.clone(),
            signer,
            schedules.clone(),
        )
        .map_err(|message| RegisterError {
            service: Self::NAME,
            message,
        })?;
        dispatcher.start(shared.shutdown.clone());
        registrar.add(grpc::Handler::new(
            store,
            settings.clone(),
            waiters,
            schedules,
            destinations,
        ));
        Ok(())
    }
}

/// How long to wait before a failed delivery is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backoff {
    Fixed {
        ms: u64,
    },
    Exponential {
        initial_ms: u64,
        max_ms: u64,
        jitter: bool,
    },
}

impl Backoff {
    /// As the stores keep it: `f:<ms>` or `e:<initial>:<max>:<0|1>`.
    pub fn encode(&self) -> String {
        match self {
            Backoff::Fixed { ms } => format!("f:{ms}"),
            Backoff::Exponential {
                initial_ms,
                max_ms,
                jitter,
            } => format!("e:{initial_ms}:{max_ms}:{}", u8::from(*jitter)),
        }
    }

    pub fn decode(text: &str) -> Option<Self> {
        let parts: Vec<&str> = text.split(':').collect();
        match parts.as_slice() {
            ["f", ms] => Some(Backoff::Fixed {
                ms: ms.parse().ok()?,
            }),
            ["e", initial, max, jitter] => Some(Backoff::Exponential {
                initial_ms: initial.parse().ok()?,
                max_ms: max.parse().ok()?,
                jitter: *jitter == "1",
            }),
            _ => None,
        }
    }

    /// The delay before the retry that follows delivery `attempt` (1-based);
    /// `random` in [0, 1) draws the jitter.
    pub fn delay_ms(&self, attempt: u32, random: f64) -> u64 {
        match *self {
            Backoff::Fixed { ms } => ms,
            Backoff::Exponential {
                initial_ms,
                max_ms,
                jitter,
            } => {
                let exp = attempt.saturating_sub(1).min(40);
                let full = initial_ms.saturating_mul(1u64 << exp).min(max_ms);
                if jitter {
                    (full as f64 * random) as u64
                } else {
                    full
                }
            }
        }
    }
}

/// A validated message to enqueue, with its times resolved to ms since
/// the epoch by the store's clock (`delay_ms` from now, or `not_before`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
    pub dedup_id: String,
    pub dedup_window_ms: u64,
    pub delay_ms: u64,
    /// 0: none.
    pub not_before_ms: u64,
    pub priority: u32,
    pub group: String,
    pub max_attempts: u32,
    pub backoff: Backoff,
    pub lease_ms: u64,
    /// 0: never.
    pub expire_at_ms: u64,
}

/// What an enqueue answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    New(String),
    Duplicate(String),
    /// The queue holds `queue.max_messages`.
    Full,
}

/// A message as delivered under a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: String,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
    pub attempt: u32,
    pub max_attempts: u32,
    pub token: String,
    pub lease_expires_ms: u64,
    pub enqueued_ms: u64,
    pub priority: u32,
    pub group: String,
}

/// What a lease call found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leased {
    pub deliveries: Vec<Delivery>,
    /// With none delivered: when the next delayed message is due (ms since
    /// the epoch), if any.
    pub next_due_ms: Option<u64>,
}

/// The answer to an Ack, Nack or ExtendLease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseCheck<T> {
    Done(T),
    /// The token is not the message's current lease.
    Lost,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dead {
    pub delivery: Delivery,
    pub died_ms: u64,
    pub reason: String,
    /// Where the next page starts.
    pub cursor: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    pub waiting: u64,
    pub delayed: u64,
    pub leased: u64,
    pub dead: u64,
    pub oldest_waiting_ms: Option<u64>,
    pub paused: bool,
    pub enqueued_total: u64,
    pub acked_total: u64,
    pub retried_total: u64,
    pub dead_total: u64,
    pub expired_total: u64,
    pub enqueue_rate: f64,
    pub ack_rate: f64,
}

/// The random part of lease tokens: 64 bits per delivery.
pub fn token_seeds(n: usize) -> Result<Vec<String>, getrandom::Error> {
    (0..n).map(|_| crate::random::hex(8)).collect()
}

/// Headers travel to the store as JSON.
pub fn encode_headers(headers: &BTreeMap<String, String>) -> String {
    serde_json::to_string(headers).unwrap_or_else(|_| "{}".to_owned())
}

pub fn decode_headers(text: &str) -> BTreeMap<String, String> {
    serde_json::from_str(text).unwrap_or_default()
}

/// A message's place in the ready set: higher priority first, then FIFO.
/// Exact in a double: priority below 16, sequence below 2^44.
pub fn ready_score(priority: u32, seq: u64) -> f64 {
    (f64::from(MAX_PRIORITY - priority.min(MAX_PRIORITY))) * (1u64 << 44) as f64 + seq as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_round_trips_and_grows_to_its_cap() {
        let e = Backoff::Exponential {
            initial_ms: 100,
            max_ms: 1000,
            jitter: false,
        };
        assert_eq!(Backoff::decode(&e.encode()), Some(e));
        assert_eq!(
            [1, 2, 3, 4, 5, 50].map(|a| e.delay_ms(a, 0.5)),
            [100, 200, 400, 800, 1000, 1000]
        );
        let j = Backoff::Exponential {
            initial_ms: 100,
            max_ms: 1000,
            jitter: true,
        };
        assert_eq!(j.delay_ms(3, 0.5), 200);
        assert_eq!(Backoff::Fixed { ms: 7 }.delay_ms(9, 0.1), 7);
        assert_eq!(Backoff::decode("x"), None);
    }

    #[test]
    fn ready_scores_order_by_priority_then_sequence() {
        assert!(ready_score(9, 100) < ready_score(0, 1));
        assert!(ready_score(5, 1) < ready_score(5, 2));
    }
}
