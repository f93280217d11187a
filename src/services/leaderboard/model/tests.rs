//! The order key, the operators and periods.

use super::*;

fn rec(owner: &str, score: i64, subscore: i64, seq: u64) -> Record {
    Record {
        owner_id: owner.to_owned(),
        score,
        subscore,
        seq,
        updated_ms: 0,
        submissions: 1,
        metadata: vec![],
    }
}

#[test]
fn order_keys_sort_as_the_ranking() {
    let values = [
        -SCORE_LIMIT,
        -SCORE_LIMIT + 1,
        -1_000_000,
        -10,
        -1,
        0,
        1,
        9,
        10,
        1 << 40,
        SCORE_LIMIT - 1,
        SCORE_LIMIT,
    ];
    for sort in [SortOrder::Ascending, SortOrder::Descending] {
        let mut keys: Vec<(String, i64)> = values
            .iter()
            .map(|&v| (order_key(sort, TieBreak::OwnerId, &rec("o", v, 0, 1)), v))
            .collect();
        keys.sort();
        let got: Vec<i64> = keys.into_iter().map(|(_, v)| v).collect();
        let mut want = values.to_vec();
        if sort == SortOrder::Descending {
            want.reverse();
        }
        assert_eq!(got, want, "{sort:?}");
    }
}

#[test]
fn ties_break_by_write_number_or_owner() {
    let d = SortOrder::Descending;
    let first = rec("zed", 5, 0, 1);
    let second = rec("amy", 5, 0, 2);
    assert!(order_key(d, TieBreak::Earliest, &first) < order_key(d, TieBreak::Earliest, &second));
    assert!(order_key(d, TieBreak::Latest, &first) > order_key(d, TieBreak::Latest, &second));
    assert!(order_key(d, TieBreak::OwnerId, &first) > order_key(d, TieBreak::OwnerId, &second));
    let key = order_key(d, TieBreak::Earliest, &first);
    assert_eq!(&key[prefix_len(TieBreak::Earliest)..], "zed");
}

#[test]
fn operators_apply_as_documented() {
    let (d, a) = (SortOrder::Descending, SortOrder::Ascending);
    use Applied::*;
    assert_eq!(apply(Operator::Best, d, 0, Some((5, 1)), 5, 0), Kept);
    assert_eq!(
        apply(Operator::Best, d, 0, Some((5, 1)), 5, 2),
        Changed(5, 2)
    );
    assert_eq!(
        apply(Operator::Best, a, 0, Some((5, 1)), 4, 9),
        Changed(4, 9)
    );
    assert_eq!(
        apply(Operator::Set, d, 0, Some((5, 1)), 1, 0),
        Changed(1, 0)
    );
    assert_eq!(
        apply(Operator::Increment, d, 0, Some((5, 1)), 2, 1),
        Changed(7, 2)
    );
    assert_eq!(
        apply(Operator::Decrement, d, 0, Some((5, 0)), 9, 0),
        Changed(0, 0)
    );
    assert_eq!(
        apply(Operator::Decrement, d, -3, None, 1, 0),
        Changed(-1, 0)
    );
    assert_eq!(
        apply(Operator::Decrement, d, -3, Some((-2, 0)), 5, 0),
        Changed(-3, 0)
    );
    assert_eq!(
        apply(Operator::Increment, d, 0, Some((SCORE_LIMIT, 0)), 1, 0),
        OutOfRange
    );
}

#[test]
fn periods_follow_the_schedule() {
    let def = Definition {
        id: "b".into(),
        sort: SortOrder::Descending,
        operator: Operator::Best,
        tie_break: TieBreak::Earliest,
        reset_cron: "0 * * * *".into(),
        time_zone: String::new(),
        keep_periods: 2,
        decrement_floor: 0,
        metadata: vec![],
        created_ms: 0,
        generation: 1,
        revision: 1,
    };
    // 2026-01-01T00:30:00Z is in the period 00:00–01:00.
    let t = 1_767_227_400_000;
    let span = def.period_at(t);
    assert_eq!(span.start_ms, 1_767_225_600_000);
    assert_eq!(span.end_ms, Some(1_767_229_200_000));
    // On the tick, a new period starts.
    assert_eq!(def.period_at(1_767_229_200_000).start_ms, 1_767_229_200_000);
    assert_eq!(
        def.expire_at_ms(span),
        Some(1_767_229_200_000 + 2 * 3_600_000 + 60_000)
    );
    assert_eq!(parse_period(&span.id()), Some(span.start_ms));
    assert_eq!(parse_period("x1"), None);
}
