use std::collections::BTreeMap;
use std::time::Duration;

use super::*;

fn config() -> MetricConfig {
    MetricConfig {
        resolutions: vec![
            Resolution::new(Duration::from_secs(60), Duration::from_secs(3600)),
            Resolution::new(Duration::from_secs(3600), Duration::from_secs(86400)),
        ],
        max_combinations: 10,
        top_size: 5,
    }
}

fn event(metric: &str, dims: &[(&str, &str)], amount: Amount, at_ms: Option<u64>) -> Event {
    Event {
        metric: metric.into(),
        dimensions: dims
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        amount,
        at_ms,
        unique_id: None,
        top: BTreeMap::new(),
    }
}

#[test]
fn a_batch_merges_events_of_one_bucket_and_combination() {
    let events = vec![
        event("m", &[("x", "1")], Amount::Count(2), Some(60_000)),
        event("m", &[("x", "1")], Amount::Sample(5.0), Some(119_999)),
        event("m", &[("x", "1")], Amount::Count(1), Some(120_000)),
        event("m", &[("x", "1")], Amount::Count(1), None),
        event("n", &[], Amount::Sample(-1.5), None),
    ];
    let batches = batches(events, |_| config());
    assert_eq!(batches.len(), 2);
    let m = &batches[0];
    assert_eq!((m.metric.as_str(), m.events), ("m", 4));
    // None (the store's clock) sorts first, then the two minutes.
    let ats: Vec<Option<u64>> = m.slices.iter().map(|s| s.at_ms).collect();
    assert_eq!(ats, [None, Some(60_000), Some(120_000)]);
    let (agg, n) = m.slices[1].series[&Combo::of(&BTreeMap::from([("x".into(), "1".into())]))];
    assert_eq!(n, 2);
    assert_eq!(agg.count, 3);
    assert_eq!(agg.sum, 7.0);
    assert_eq!((agg.min, agg.max), (Some(5.0), Some(5.0)));
    let (n_agg, _) = batches[1].slices[0].series[&Combo::of(&BTreeMap::new())];
    assert_eq!((n_agg.count, n_agg.min), (1, Some(-1.5)));
}

#[test]
fn combinations_read_back_their_values_and_other_answers_other() {
    let dims = BTreeMap::from([
        ("exchange".into(), "kraken".into()),
        ("side".into(), "buy".into()),
    ]);
    let c = Combo::of(&dims);
    assert_eq!(c.get("exchange"), Some("kraken"));
    assert_eq!(c.get("side"), Some("buy"));
    assert_eq!(c.get("venue"), None);
    assert_eq!(Combo::other().get("side"), Some(OTHER));
    assert_ne!(Combo::of(&BTreeMap::new()), Combo::other());
}

#[test]
fn grouping_filters_sums_and_fills_zeros() {
    let a = Combo::of(&BTreeMap::from([
        ("ex".into(), "a".into()),
        ("k".into(), "1".into()),
    ]));
    let b = Combo::of(&BTreeMap::from([
        ("ex".into(), "b".into()),
        ("k".into(), "1".into()),
    ]));
    let one = Amount::Count(1).agg();
    let buckets = vec![
        vec![(a.clone(), one), (b.clone(), one)],
        vec![],
        vec![(a.clone(), one)],
    ];
    let all = group(&buckets, &Filters::default(), &[]);
    assert_eq!(all.len(), 1);
    let counts: Vec<i64> = all[&GroupKey::new()].iter().map(|p| p.count).collect();
    assert_eq!(counts, [2, 0, 1]);
    let by_ex = group(&buckets, &Filters::default(), &["ex".into()]);
    let a_counts: Vec<i64> = by_ex[&GroupKey::from([("ex".into(), "a".into())])]
        .iter()
        .map(|p| p.count)
        .collect();
    assert_eq!(a_counts, [1, 0, 1]);
    let only_b = Filters(vec![("ex".into(), ["b".to_string()].into())]);
    let counts: Vec<i64> = group(&buckets, &only_b, &[])[&GroupKey::new()]
        .iter()
        .map(|p| p.count)
        .collect();
    assert_eq!(counts, [1, 0, 0]);
    // Nothing matches a grouped read: no series at all.
    let none = Filters(vec![("ex".into(), ["z".to_string()].into())]);
    assert!(group(&buckets, &none, &["ex".into()]).is_empty());
}

#[test]
fn the_chosen_resolution_is_the_finest_kept_that_fits() {
    let c = config();
    let now = 10 * 86_400_000;
    let recent = Range {
        from_ms: now - 600_000,
        to_ms: now,
    };
    assert_eq!(c.choose("", recent, now, 100).unwrap().name, "1m");
    // Two hours ago is past the minute's retention (1 h).
    let older = Range {
        from_ms: now - 7_200_000,
        to_ms: now,
    };
    assert_eq!(c.choose("", older, now, 1000).unwrap().name, "1h");
    // 11 minute points do not fit in 5: the hour does.
    assert_eq!(c.choose("", recent, now, 5).unwrap().name, "1h");
    assert_eq!(c.choose("1m", recent, now, 100).unwrap().name, "1m");
    assert!(
        c.choose("1m", recent, now, 5)
            .unwrap_err()
            .contains("max_points")
    );
    assert!(
        c.choose("5m", recent, now, 100)
            .unwrap_err()
            .contains("`1m`, `1h`")
    );
    let huge = Range {
        from_ms: 0,
        to_ms: now,
    };
    assert!(c.choose("", huge, now, 10).is_err());
}

#[test]
fn bucket_starts_cover_the_range_outward() {
    let r = Resolution::new(Duration::from_secs(60), Duration::from_secs(3600));
    assert_eq!(
        r.starts(Range {
            from_ms: 59_999,
            to_ms: 120_000
        }),
        [0, 60_000, 120_000]
    );
    assert_eq!(r.expires_at(60_000), 60_000 + 60_000 + 3_600_000);
    assert_eq!(r.name, "1m");
}

#[test]
fn top_k_orders_by_count_then_value() {
    let counts = BTreeMap::from([
        ("b".into(), 3),
        ("a".into(), 3),
        ("c".into(), 9),
        ("z".into(), 0),
    ]);
    assert_eq!(
        top_k(counts, 2),
        [("c".to_string(), 9), ("a".to_string(), 3)]
    );
}
