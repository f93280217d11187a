//! Leaderboards: exact rankings with reset periods. `model.rs` is the
//! domain (definitions, operators, the order key every store sorts by,
//! periods); `settings.rs` bounds requests; `grpc.rs` converts the wire;
//! `store.rs` is what the memory and Redis stores implement.
//!
//! Ranks are exact because nothing is a float: a record's place is a
//! fixed-width text key of (score, subscore, tie-break, owner), and Redis
//! keeps a period's keys in a sorted set at one score, ordered by bytes.
//! Ties by time use the period's write number, never a clock, so two writes
//! in the same microsecond still rank by which came first.
//!
//! A resetting board's period is decided by the store's clock (Redis
//! `TIME`) inside the write's script, so every write lands in exactly one
//! period, even at the rollover instant.

mod grpc;
mod memory;
pub mod model;
mod redis;
pub mod settings;
pub mod store;

pub use settings::Settings;

use crate::keys::Space;
use crate::registry::{Module, RegisterError, Registrar};

/// Definitions, revision counters and period indexes, tagged by board.
pub const BOARD_SPACE: Space = Space::durable("lb");
/// Records of boards that never reset: data, kept until deleted.
pub const RECORD_SPACE: Space = Space::durable("lbr");
/// Records of resetting boards: expire `keep_periods` after their period.
pub const PERIODIC_SPACE: Space = Space::expiring("lbp");
/// Remembered Submit replies, by idempotency key.
pub const IDEM_SPACE: Space = Space::expiring("lbi");
/// The tenant's board ids.
pub const INDEX_SPACE: Space = Space::durable("lbx");

pub struct Service;

impl Module for Service {
    const NAME: &'static str = "leaderboard";
    type Settings = Settings;
    const SPACES: &'static [Space] = &[
        BOARD_SPACE,
        RECORD_SPACE,
        PERIODIC_SPACE,
        IDEM_SPACE,
        INDEX_SPACE,
    ];

    fn register(settings: &Settings, registrar: &mut Registrar<'_>) -> Result<(), RegisterError> {
        let store = store::build(registrar.backend());
        registrar.add(grpc::Handler::new(store, settings.clone()));
        Ok(())
    }
}
