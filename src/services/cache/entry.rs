//! An entry as a Get reads it without a script: its fields (HMGET) and
//! the key's time to expiry (PTTL), see `RedisCache::get_many`.

use deadpool_redis::redis::{FromRedisValue, Value};

use super::Found;
use crate::store::StoreError;

fn internal(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::internal(format!("cache entry reply ({what}): {e}"))
}

/// The entry fields a Get reads, in [`read_entry`]'s order.
pub(super) const ENTRY_FIELDS: [&str; 6] = ["v", "ct", "ver", "fu", "ea", "tg"];

/// An entry from its `ENTRY_FIELDS` and the key's PTTL (ms; negative when
/// the key is gone or has no expiry, which a written entry always has).
pub(super) fn read_entry(fields: Vec<Value>, pttl_ms: i64) -> Result<Option<Found>, StoreError> {
    let [value, content_type, version, fresh_until, expires_at, tags]: [Value; 6] = fields
        .try_into()
        .map_err(|f: Vec<Value>| internal("entry", format!("{} fields", f.len())))?;
    if matches!(value, Value::Nil) || pttl_ms <= 0 {
        return Ok(None);
    }
    let text = |v: Value| {
        Option::<String>::from_redis_value(v)
            .map(Option::unwrap_or_default)
            .map_err(|e| internal("text", e))
    };
    let number = |v: Value, what: &str| text(v)?.parse::<u64>().map_err(|e| internal(what, e));
    let (fresh_until, expires_at) = (number(fresh_until, "fu")?, number(expires_at, "ea")?);
    // The key expires at the millisecond after `ea` (PEXPIREAT rounds up).
    let rounding = expires_at.div_ceil(1000) * 1000 - expires_at;
    let expires_in_us = (pttl_ms as u64 * 1000).saturating_sub(rounding);
    let stale_window = expires_at.saturating_sub(fresh_until);
    let ttl_us = expires_in_us.saturating_sub(stale_window);
    Ok(Some(Found {
        value: Vec::<u8>::from_redis_value(value).map_err(|e| internal("value", e))?,
        content_type: text(content_type)?,
        version: number(version, "version")?,
        ttl_us,
        stale: ttl_us == 0,
        expires_in_us,
        tags: super::split_tags(&text(tags)?),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(fresh_until: u64, expires_at: u64) -> Vec<Value> {
        let text = |s: String| Value::BulkString(s.into_bytes());
        vec![
            text("value".into()),
            text("text/plain".into()),
            text("7".into()),
            text(fresh_until.to_string()),
            text(expires_at.to_string()),
            text("a\nb".into()),
        ]
    }

    #[test]
    fn times_follow_from_the_time_to_expiry() {
        // Fresh for 10 s more, then stale for 30 s; the key expires at the
        // millisecond after `ea` (1_040_000_500 us), 40_001 ms from now.
        let e = read_entry(fields(1_010_000_500, 1_040_000_500), 40_001)
            .unwrap()
            .unwrap();
        assert_eq!(e.expires_in_us, 40_000_500);
        assert_eq!(e.ttl_us, 10_000_500);
        assert!(!e.stale);
        assert_eq!((e.version, e.tags.len()), (7, 2));
        // 20 s on: stale, still served.
        let e = read_entry(fields(1_010_000_500, 1_040_000_500), 20_001)
            .unwrap()
            .unwrap();
        assert_eq!((e.ttl_us, e.stale), (0, true));
    }

    #[test]
    fn a_missing_entry_or_key_is_a_miss() {
        let mut nil = fields(1, 2);
        nil[0] = Value::Nil;
        assert_eq!(read_entry(nil, 5_000).unwrap(), None);
        assert_eq!(read_entry(fields(1, 2), -2).unwrap(), None);
        assert!(read_entry(vec![Value::Nil], 5).is_err());
    }
}
