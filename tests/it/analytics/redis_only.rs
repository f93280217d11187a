//! Redis-only behaviour of AnalyticsService: untimed events are bucketed by
//! Redis's clock, and every key expires its retention after its bucket.

use super::{app, ev, track};
use crate::harness::Backend;
use crate::invariants::fresh;

fn redis_ms(app: &crate::harness::TestApp) -> u64 {
    // TIME answers *2 $len secs $len micros.
    let reply = app.redis().cmd(&["TIME"]);
    let parts: Vec<&str> = reply
        .split("\r\n")
        .filter(|l| !l.is_empty() && !l.starts_with('*') && !l.starts_with('$'))
        .collect();
    parts[0].parse::<u64>().unwrap() * 1000 + parts[1].parse::<u64>().unwrap() / 1000
}

/// An event without a time lands in the minute, hour and day of Redis
/// `TIME`; each bucket key's TTL is its end plus its retention.
#[tokio::test]
async fn untimed_events_use_redis_time_and_every_key_expires() {
    let app = app(Backend::Redis).await;
    let metric = fresh("clock");
    let mut e = ev(&metric, &[("k", "v")]);
    e.unique_id = "user".into();
    e.top.insert("who".into(), "x".into());
    let before = redis_ms(&app);
    track(&app, vec![e]).await;
    let after = redis_ms(&app);
    let prefix = format!("dl:{}:an:{{{metric}}}", app.namespace);
    for (name, bucket, retention) in [
        ("1m", 60_000u64, 48 * 3_600_000u64),
        ("1h", 3_600_000, 90 * 86_400_000),
        ("1d", 86_400_000, 730 * 86_400_000),
    ] {
        let keys = app.redis().keys(&format!("{prefix}:s:{name}:*"));
        assert_eq!(keys.len(), 1, "{keys:?}");
        let start: u64 = keys[0].rsplit(':').next().unwrap().parse().unwrap();
        assert!(
            start == before - before % bucket || start == after - after % bucket,
            "bucket {start} is not Redis's {name} of {before}..{after}"
        );
        for kind in ["s", "u"] {
            let key = format!("{prefix}:{kind}:{name}:{start}");
            let ttl = app.redis().pttl(&key) as u64;
            let want = start + bucket + retention - after;
            assert!(
                ttl <= want + 1000 && ttl + 5000 >= want,
                "{key}: {ttl} vs {want}"
            );
        }
        let top = format!("{prefix}:t:{name}:{start}:who");
        assert!(app.redis().pttl(&top) > 0, "{top}");
    }
    for key in app.redis().keys(&format!("dl:{}:*", app.namespace)) {
        let ttl = app.redis().pttl(&key);
        assert!(ttl > 0, "{key} has no TTL ({ttl})");
    }
}
