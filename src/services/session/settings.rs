//! `session.*`: the bounds of every session request.

use std::{collections::BTreeMap, time::Duration};

use super::{
    MAX_CLIENT_IP_BYTES, MAX_PURPOSE_BYTES, MAX_SUBJECT_BYTES, MAX_USER_AGENT_BYTES,
    MAX_USER_ID_BYTES, data_bytes,
};
use crate::settings::{Problems, days, hours, join, mins, secs};
use crate::validate::{self, DurationRange, FieldViolation};

crate::section! {
    /// Sessions: the bounds of every request.
    pub struct Settings {
        /// Largest session data (keys and values together), in bytes.
        pub max_data_bytes: usize = 64 * 1024, range(1, 1024 * 1024);
        /// Idle TTL of a session created without one; at most
        /// `session.max_absolute_ttl`.
        pub default_idle_ttl: Duration = mins(30), range(Duration::from_millis(1), days(366));
        /// Absolute TTL of a session created without one; at most
        /// `session.max_absolute_ttl`.
        pub default_absolute_ttl: Duration = hours(24), range(Duration::from_millis(1), days(366));
        /// Longest idle or absolute TTL a caller may ask for.
        pub max_absolute_ttl: Duration = days(90), range(secs(1), days(366));
        /// Live sessions per user: the default and the upper bound of a
        /// request's `max_sessions_per_user`. Bounds each user's index.
        pub max_sessions_per_user: u32 = 100, range(1, 10_000);
        /// Longest one-time token TTL.
        pub max_one_time_ttl: Duration = days(7), range(secs(1), days(366));
    }
    check = Settings::rules;
}

impl Settings {
    fn rules(&self, path: &str, problems: &mut Problems) {
        for (key, ttl) in [
            ("default_idle_ttl", self.default_idle_ttl),
            ("default_absolute_ttl", self.default_absolute_ttl),
        ] {
            if ttl > self.max_absolute_ttl {
                problems.push(join(path, key), "must be at most session.max_absolute_ttl");
            }
        }
    }

    pub fn user_id(&self, user_id: &str, field: &str) -> Result<(), FieldViolation> {
        validate::text(user_id, field, 1, MAX_USER_ID_BYTES)
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
        validate::text(ip, "client_ip", 0, MAX_CLIENT_IP_BYTES)
    }

    pub fn user_agent(&self, ua: &str) -> Result<(), FieldViolation> {
        validate::text(ua, "user_agent", 0, MAX_USER_AGENT_BYTES)
    }

    pub fn purpose(&self, purpose: &str) -> Result<(), FieldViolation> {
        validate::text(purpose, "purpose", 1, MAX_PURPOSE_BYTES)
    }

    pub fn subject(&self, subject: &str) -> Result<(), FieldViolation> {
        validate::text(subject, "subject", 1, MAX_SUBJECT_BYTES)
    }

    fn lifetime(&self) -> DurationRange {
        DurationRange::up_to(self.max_absolute_ttl, "session.max_absolute_ttl")
    }

    pub fn idle_ttl(&self, ttl: Option<Duration>) -> Result<u64, FieldViolation> {
        self.lifetime()
            .micros(ttl, Some(self.default_idle_ttl), "idle_ttl")
    }

    pub fn absolute_ttl(&self, ttl: Option<Duration>) -> Result<u64, FieldViolation> {
        self.lifetime()
            .micros(ttl, Some(self.default_absolute_ttl), "absolute_ttl")
    }

    pub fn one_time_ttl(&self, ttl: Option<Duration>) -> Result<u64, FieldViolation> {
        DurationRange::up_to(self.max_one_time_ttl, "session.max_one_time_ttl")
            .micros(ttl, None, "ttl")
    }

    /// A request's cap, 0 meaning the configured one.
    pub fn max_sessions(&self, requested: u32) -> Result<u32, FieldViolation> {
        match requested {
            0 => Ok(self.max_sessions_per_user),
            n if n > self.max_sessions_per_user => Err(FieldViolation::new(
                "max_sessions_per_user",
                format!(
                    "must be at most {} (session.max_sessions_per_user)",
                    self.max_sessions_per_user
                ),
            )),
            n => Ok(n),
        }
    }
}
