//! `leaderboard.*`: the bounds of every leaderboard request.

use std::time::Duration;

use super::model::SCORE_LIMIT;
use crate::settings::{days, hours, ms, secs};
use crate::validate::{self, FieldViolation};

crate::section! {
    /// Leaderboards: bounds.
    pub struct Settings {
        /// Most boards per tenant; a create past it is RESOURCE_EXHAUSTED.
        pub max_boards: usize = 1000, range(1, 1_000_000);
        /// Most owners with a record in one period of one board.
        pub max_owners: u64 = 10_000_000, range(1, 1_000_000_000);
        /// Longest owner id, in bytes.
        pub max_owner_id_bytes: usize = 128, range(1, 1024);
        /// Largest metadata of a board or a record, in bytes.
        pub max_metadata_bytes: usize = 2048, range(0, 65_536);
        /// Longest idempotency key, in bytes.
        pub max_idempotency_key_bytes: usize = 128, range(1, 1024);
        /// How long a Submit's idempotency key is remembered.
        pub idempotency_window: Duration = hours(24), range(secs(1), days(7));
        /// Most past periods a board may keep readable.
        pub max_keep_periods: u32 = 100, range(0, 10_000);
        /// Largest `Top`, `AroundOwner` (each side), `Records` and
        /// `ListLeaderboards` page.
        pub max_page_size: usize = 1000, range(1, 10_000);
        /// Most records one `WatchTop` follows.
        pub max_watch_top: usize = 100, range(1, 1000);
        /// Most `WatchTop` streams open at once on one replica.
        pub max_watches: usize = 1000, range(1, 100_000);
        /// How often a `WatchTop` stream reads the top to look for changes.
        pub watch_interval: Duration = ms(250), range(ms(10), secs(60));
    }
}

impl Settings {
    pub fn owner(&self, owner: &str, field: &str) -> Result<(), FieldViolation> {
        validate::text(owner, field, 1, self.max_owner_id_bytes)
    }

    pub fn owners(&self, owners: &[String], field: &str) -> Result<(), FieldViolation> {
        validate::batch(
            owners.len(),
            field,
            self.max_page_size,
            "leaderboard.max_page_size",
        )?;
        for (i, owner) in owners.iter().enumerate() {
            self.owner(owner, &format!("{field}[{i}]"))?;
        }
        Ok(())
    }

    pub fn metadata(&self, metadata: &[u8], field: &str) -> Result<(), FieldViolation> {
        if metadata.len() > self.max_metadata_bytes {
            return Err(FieldViolation::new(
                field,
                format!(
                    "must be at most {} bytes (leaderboard.max_metadata_bytes), got {}",
                    self.max_metadata_bytes,
                    metadata.len()
                ),
            ));
        }
        Ok(())
    }

    pub fn idempotency_key(&self, key: &str, field: &str) -> Result<(), FieldViolation> {
        validate::text(key, field, 0, self.max_idempotency_key_bytes)
    }

    pub fn keep_periods(&self, keep: u32, field: &str) -> Result<u32, FieldViolation> {
        if keep > self.max_keep_periods {
            return Err(FieldViolation::new(
                field,
                format!(
                    "must be at most {} (leaderboard.max_keep_periods), got {keep}",
                    self.max_keep_periods
                ),
            ));
        }
        Ok(keep)
    }

    /// A page size: 1 to `max_page_size` (0: `default`).
    pub fn page(&self, limit: u32, default: usize, field: &str) -> Result<usize, FieldViolation> {
        self.bounded(limit, default, self.max_page_size, "max_page_size", field)
    }

    pub fn watch_limit(&self, limit: u32, field: &str) -> Result<usize, FieldViolation> {
        self.bounded(limit, 10, self.max_watch_top, "max_watch_top", field)
    }

    /// `above`/`below` of `AroundOwner`: 0 to `max_page_size`.
    pub fn side(&self, n: u32, field: &str) -> Result<usize, FieldViolation> {
        if n as usize > self.max_page_size {
            return Err(self.too_many(n, self.max_page_size, "max_page_size", field));
        }
        Ok(n as usize)
    }

    fn bounded(
        &self,
        n: u32,
        default: usize,
        max: usize,
        setting: &str,
        field: &str,
    ) -> Result<usize, FieldViolation> {
        match n as usize {
            0 => Ok(default.min(max)),
            n if n > max => Err(self.too_many(n as u32, max, setting, field)),
            n => Ok(n),
        }
    }

    fn too_many(&self, n: u32, max: usize, setting: &str, field: &str) -> FieldViolation {
        FieldViolation::new(
            field,
            format!("must be at most {max} (leaderboard.{setting}), got {n}"),
        )
    }
}

/// A score or subscore within ±(2^53 − 1).
pub fn score(v: i64, field: &str) -> Result<i64, FieldViolation> {
    if (-SCORE_LIMIT..=SCORE_LIMIT).contains(&v) {
        Ok(v)
    } else {
        Err(FieldViolation::new(
            field,
            format!("must be within ±{SCORE_LIMIT} (2^53 − 1) so ranks stay exact, got {v}"),
        ))
    }
}
