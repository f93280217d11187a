//! `topic.*`: the bounds of every topic request and of retention.

use std::time::Duration;

use crate::settings::{days, hours, ms, secs};
use crate::validate::{self, DurationRange, FieldViolation};

/// Longest header name or value, in bytes.
pub const MAX_HEADER_BYTES: usize = 1024;

crate::section! {
    /// Topics: retention, fan-out and bounds.
    pub struct Settings {
        /// Largest payload, in bytes.
        pub max_payload_bytes: usize = 256 * 1024, range(1, 16 * 1024 * 1024);
        /// Most headers on one message.
        pub max_headers: usize = 16, range(0, 256);
        /// Most messages in one `PublishBatch`, and ids in one `Ack`.
        pub max_batch: usize = 100, range(1, 10_000);
        /// Most messages a topic keeps: older ones are trimmed at each
        /// publish.
        pub max_length: u64 = 100_000, range(1, 100_000_000);
        /// Longest a topic keeps a message; also how long a topic nobody
        /// publishes to lives.
        pub max_age: Duration = hours(24), range(secs(1), days(30));
        /// Most subscribers on one replica.
        pub max_subscribers: usize = 10_000, range(1, 1_000_000);
        /// Messages buffered per fan-out subscriber; a subscriber that
        /// falls this far behind is told where to resume, and its stream
        /// ends.
        pub subscriber_buffer: usize = 1024, range(1, 1_000_000);
        /// How often a topic's reader reads new messages published through
        /// other replicas (a publish through this replica wakes it at
        /// once), and how often a group member with nothing to do looks
        /// again.
        pub poll_interval: Duration = ms(20), range(ms(1), secs(10));
        /// How long a group member may hold a message unacknowledged before
        /// it is delivered again, when the subscription gives none.
        pub default_ack_timeout: Duration = secs(30), range(ms(100), hours(12));
        /// Longest `ack_timeout`.
        pub max_ack_timeout: Duration = hours(12), range(secs(1), days(1));
        /// Most messages one read of a replay (or of a topic's feed) takes.
        pub read_batch: usize = 256, range(1, 10_000);
        /// Most messages a group member holds unacknowledged: it is sent
        /// no new one past that until it acks. What a member that dies
        /// holds waits for its ack timeout, so keep it small.
        pub group_prefetch: usize = 10, range(1, 1000);
    }
}

impl Settings {
    pub fn payload(&self, payload: &[u8], field: &str) -> Result<(), FieldViolation> {
        if payload.len() > self.max_payload_bytes {
            return Err(FieldViolation::new(
                field,
                format!(
                    "must be at most {} bytes (topic.max_payload_bytes), got {}",
                    self.max_payload_bytes,
                    payload.len()
                ),
            ));
        }
        Ok(())
    }

    pub fn headers(
        &self,
        headers: &std::collections::HashMap<String, String>,
        field: &str,
    ) -> Result<(), FieldViolation> {
        if headers.len() > self.max_headers {
            return Err(FieldViolation::new(
                field,
                format!(
                    "at most {} headers (topic.max_headers), got {}",
                    self.max_headers,
                    headers.len()
                ),
            ));
        }
        for (name, value) in headers {
            validate::text(name, field, 1, MAX_HEADER_BYTES)?;
            validate::text(value, field, 0, MAX_HEADER_BYTES)?;
        }
        Ok(())
    }

    pub fn batch(&self, len: usize, field: &str) -> Result<(), FieldViolation> {
        validate::batch(len, field, self.max_batch, "topic.max_batch")
    }

    /// A group subscription's ack timeout, in ms.
    pub fn ack_timeout_ms(
        &self,
        value: Option<Duration>,
        field: &str,
    ) -> Result<u64, FieldViolation> {
        let range = DurationRange {
            min: ms(100),
            max: self.max_ack_timeout,
            setting: "topic.max_ack_timeout",
        };
        Ok(range.micros(value, Some(self.default_ack_timeout), field)? / 1000)
    }

    pub fn retention(&self) -> super::Retention {
        super::Retention {
            max_len: self.max_length,
            max_age_ms: self.max_age.as_millis() as u64,
        }
    }
}

/// A group or consumer name: 1 to 128 bytes of `[A-Za-z0-9_.:-]`.
pub fn group_name(value: &str, field: &str) -> Result<(), FieldViolation> {
    validate::name(value, field)
}
