//! Cron expressions in a time zone: queue schedules fire on their ticks,
//! leaderboard periods start on them.

use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;

/// A schedule's cron expression in its time zone.
#[derive(Debug, Clone)]
pub struct CronSpec {
    cron: Cron,
    tz: Tz,
}

impl CronSpec {
    /// Five fields (or six with seconds first), in an IANA time zone
    /// (empty: UTC).
    pub fn parse(cron: &str, time_zone: &str) -> Result<Self, Vec<(&'static str, String)>> {
        let parsed = Cron::from_str(cron).map_err(|e| {
            (
                "cron",
                format!("is not a cron expression ({e}); e.g. `*/5 * * * *` or `0 9 * * MON-FRI`"),
            )
        });
        let tz = if time_zone.is_empty() {
            Ok(Tz::UTC)
        } else {
            Tz::from_str(time_zone).map_err(|_| {
                (
                    "time_zone",
                    format!(
                        "is not an IANA time zone, got {}; e.g. Europe/Paris",
                        crate::validate::quote(time_zone)
                    ),
                )
            })
        };
        match (parsed, tz) {
            (Ok(cron), Ok(tz)) => Ok(Self { cron, tz }),
            (a, b) => Err([a.err(), b.err()].into_iter().flatten().collect()),
        }
    }

    /// The last tick at or before `ms`, on a whole second: when the
    /// period holding `ms` began.
    pub fn last_at_or_before(&self, ms: u64) -> Option<u64> {
        let whole = (ms / 1000) as i64;
        let at: DateTime<Utc> = Utc.timestamp_opt(whole, 0).single()?;
        let local = at.with_timezone(&self.tz);
        if self.cron.is_time_matching(&local).unwrap_or(false) {
            return Some(whole as u64 * 1000);
        }
        let prev = self.cron.find_previous_occurrence(&local, false).ok()?;
        u64::try_from(prev.timestamp()).ok().map(|s| s * 1000)
    }

    /// The first tick strictly after `ms` (since the epoch), on a whole
    /// second.
    pub fn next_after(&self, ms: u64) -> Option<u64> {
        let whole = (ms / 1000) as i64;
        let at: DateTime<Utc> = Utc.timestamp_opt(whole, 0).single()?;
        let local = at.with_timezone(&self.tz);
        let next = self.cron.find_next_occurrence(&local, false).ok()?;
        u64::try_from(next.timestamp()).ok().map(|s| s * 1000)
    }
}
