//! `queue.*`: the bounds and defaults of every queue request.

use std::time::Duration;

use crate::settings::{Problems, days, hours, join, mins, ms, secs};
use crate::validate::{self, DurationRange, FieldViolation};

/// Longest header name or value, in bytes.
pub const MAX_HEADER_BYTES: usize = 1024;
/// Longest dedup id or group key, in bytes.
pub const MAX_ID_BYTES: usize = 256;

crate::section! {
    /// Job queues: bounds and defaults.
    pub struct Settings {
        /// Largest payload, in bytes.
        pub max_payload_bytes: usize = 1024 * 1024, range(1, 64 * 1024 * 1024);
        /// Most headers on one message.
        pub max_headers: usize = 32, range(0, 256);
        /// Most messages in one `EnqueueBatch`.
        pub max_batch: usize = 100, range(1, 10_000);
        /// Most messages one `Lease` hands out.
        pub max_lease_batch: usize = 100, range(1, 10_000);
        /// Most messages a queue holds (waiting, delayed, leased and dead);
        /// an enqueue past it is RESOURCE_EXHAUSTED.
        pub max_messages: u64 = 1_000_000, range(1, 1_000_000_000);
        /// Attempts of a message that gives none.
        pub default_max_attempts: u32 = 5, range(1, 1000);
        /// Most attempts a message may ask for.
        pub max_attempts: u32 = 100, range(1, 10_000);
        /// Lease of a message that gives none.
        pub default_lease: Duration = secs(30), range(ms(100), hours(12));
        /// Longest lease (and lease extension).
        pub max_lease: Duration = hours(12), range(secs(1), days(7));
        /// Dedup window of a message that gives none.
        pub default_dedup_window: Duration = hours(1), range(secs(1), days(7));
        /// Longest dedup window.
        pub max_dedup_window: Duration = days(7), range(secs(1), days(30));
        /// Longest delay, and how far ahead `not_before` may be.
        pub max_delay: Duration = days(30), range(secs(1), days(366));
        /// Longest `Lease` wait (the call's deadline bounds it too).
        pub max_wait: Duration = secs(30), range(ms(0), secs(600));
        /// How often a waiting `Lease` or `Consume` looks for a message
        /// enqueued through another replica (one enqueued through this
        /// replica wakes it at once).
        pub poll_interval: Duration = ms(100), range(ms(10), secs(10));
        /// How long an acked message is remembered, so a repeated ack of
        /// the same lease is answered as done.
        pub done_retention: Duration = hours(1), range(secs(1), days(7));
        /// Largest `ListDead` page and `RedriveDead`/`PurgeDead` batch.
        pub max_page_size: usize = 1000, range(1, 10_000);
        /// Most schedules per queue.
        pub max_schedules: usize = 100, range(1, 10_000);
        /// How often schedules are checked for due ticks.
        pub schedule_interval: Duration = secs(1), range(ms(100), mins(1));
        /// Push delivery to HTTP destinations.
        pub push: super::push::PushSettings = super::push::PushSettings::default();
    }
    check = Settings::rules;
}

impl Settings {
    fn rules(&self, path: &str, problems: &mut Problems) {
        if self.default_max_attempts > self.max_attempts {
            problems.push(
                join(path, "default_max_attempts"),
                "must be at most queue.max_attempts",
            );
        }
        if self.default_lease > self.max_lease {
            problems.push(
                join(path, "default_lease"),
                "must be at most queue.max_lease",
            );
        }
        if self.default_dedup_window > self.max_dedup_window {
            problems.push(
                join(path, "default_dedup_window"),
                "must be at most queue.max_dedup_window",
            );
        }
    }

    pub fn payload(&self, payload: &[u8], field: &str) -> Result<(), FieldViolation> {
        if payload.len() > self.max_payload_bytes {
            return Err(FieldViolation::new(
                field,
                format!(
                    "must be at most {} bytes (queue.max_payload_bytes), got {}",
                    self.max_payload_bytes,
                    payload.len()
                ),
            ));
        }
        Ok(())
    }

    /// A lease duration in ms; `None` takes `default`.
    pub fn lease_ms(
        &self,
        value: Option<Duration>,
        default: Option<Duration>,
        field: &str,
    ) -> Result<u64, FieldViolation> {
        let range = DurationRange {
            min: Duration::from_millis(100),
            max: self.max_lease,
            setting: "queue.max_lease",
        };
        Ok(range.micros(value, default, field)? / 1000)
    }

    /// An optional duration up to `max` (0 or unset: none), in ms.
    pub fn optional_ms(
        &self,
        value: Option<Duration>,
        max: Duration,
        setting: &'static str,
        field: &str,
    ) -> Result<u64, FieldViolation> {
        match value {
            None => Ok(0),
            Some(d) if d.is_zero() => Ok(0),
            Some(d) => Ok(DurationRange::up_to(max, setting).micros(Some(d), None, field)? / 1000),
        }
    }

    pub fn page_size(&self, limit: u32, field: &str) -> Result<usize, FieldViolation> {
        match limit as usize {
            0 => Ok(100.min(self.max_page_size)),
            n if n > self.max_page_size => Err(FieldViolation::new(
                field,
                format!(
                    "must be at most {} (queue.max_page_size), got {n}",
                    self.max_page_size
                ),
            )),
            n => Ok(n),
        }
    }

    pub fn batch(&self, len: usize, field: &str) -> Result<(), FieldViolation> {
        validate::batch(len, field, self.max_batch, "queue.max_batch")
    }
}
