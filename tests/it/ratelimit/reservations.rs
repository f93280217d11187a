//! Reservations: a `Check` with `reserve = true` spends an estimate, and
//! `Settle` gives back what was not used (or consumes the rest) once, on
//! every algorithm and backend; what a settle gives back across windows;
//! refused tokens and costs; concurrent reservations and double settles.

use std::time::Duration;

use datalayer::proto::datalayer::ratelimit::v1::{
    self, CheckBatchRequest, CheckRequest, CheckResponse, Limit, Reason, ResetRequest,
    SettleRequest, SettleResponse, SettleResult, check_request::LimitSource,
};
use datalayer::services::ratelimit::settings::{AlgorithmName, PolicySpec};

use super::{away_from_window_edge, check, each_algorithm, fixed_window, request, sliding_window};
use crate::harness::{Backend, TestApp, assert_bad_field, timed};
use crate::invariants::fresh;

async fn app(backend: Backend) -> TestApp {
    crate::harness::spawn_app_with(backend, |s| {
        s.ratelimit.policies.insert(
            "shadow2".into(),
            PolicySpec {
                algorithm: Some(AlgorithmName::FixedWindow),
                limit: Some(2),
                window: Some(Duration::from_secs(3600)),
                shadow_mode: true,
                ..Default::default()
            },
        );
    })
    .await
}

fn reserving(key: &str, limit: &Limit, cost: u64) -> CheckRequest {
    CheckRequest {
        reserve: true,
        ..request(key, limit, Some(cost))
    }
}

async fn reserve(app: &TestApp, key: &str, limit: &Limit, cost: u64) -> CheckResponse {
    app.ratelimit
        .clone()
        .check(timed(reserving(key, limit, cost)))
        .await
        .expect("reserving check")
        .into_inner()
}

fn settling(key: &str, limit: &Limit, reservation: &str, cost: u64) -> SettleRequest {
    SettleRequest {
        key: key.to_owned(),
        limit_source: Some(v1::settle_request::LimitSource::Limit(*limit)),
        reservation: reservation.to_owned(),
        cost,
    }
}

async fn settle(
    app: &TestApp,
    key: &str,
    limit: &Limit,
    reservation: &str,
    cost: u64,
) -> SettleResponse {
    app.ratelimit
        .clone()
        .settle(timed(settling(key, limit, reservation, cost)))
        .await
        .expect("settle")
        .into_inner()
}

fn result(r: &SettleResponse) -> SettleResult {
    SettleResult::try_from(r.result).expect("a known result")
}

/// Reserve 8 of 10, use 2: the 6 come back, once.
async fn a_settle_gives_back_what_was_not_used(backend: Backend) {
    let app = app(backend).await;
    away_from_window_edge(Duration::from_secs(3600), Duration::from_secs(10)).await;
    for (name, limit) in each_algorithm(10, Duration::from_secs(3600)) {
        let key = fresh(name);
        let r = reserve(&app, &key, &limit, 8).await;
        assert!(r.allowed && !r.reservation.is_empty(), "{name}: {r:?}");
        assert_eq!(r.remaining, 2, "{name}");
        assert!(!check(&app, &key, &limit, Some(3)).await.allowed, "{name}");

        let s = settle(&app, &key, &limit, &r.reservation, 2).await;
        assert_eq!(result(&s), SettleResult::Settled, "{name}: {s:?}");
        assert_eq!(
            (s.limit, s.remaining, s.overdrawn),
            (10, 8, false),
            "{name}"
        );
        assert!(check(&app, &key, &limit, Some(3)).await.allowed, "{name}");

        // Again: nothing changes.
        let again = settle(&app, &key, &limit, &r.reservation, 0).await;
        assert_eq!(result(&again), SettleResult::AlreadySettled, "{name}");
        assert_eq!(again.remaining, 5, "{name}");
        // Each reservation is its own.
        let other = reserve(&app, &key, &limit, 1).await;
        assert_ne!(other.reservation, r.reservation, "{name}");
    }
}

/// Reserve 4, use 15: the 11 above the reservation are consumed past the
/// limit, and later checks wait.
async fn a_settle_above_the_reservation_consumes_the_rest(backend: Backend) {
    let app = app(backend).await;
    for (name, limit) in each_algorithm(10, Duration::from_secs(3600)) {
        let key = fresh(name);
        let r = reserve(&app, &key, &limit, 4).await;
        let s = settle(&app, &key, &limit, &r.reservation, 15).await;
        assert_eq!(result(&s), SettleResult::Settled, "{name}");
        assert!(s.overdrawn, "{name}: {s:?}");
        assert_eq!(s.remaining, 0, "{name}");
        assert!(!check(&app, &key, &limit, None).await.allowed, "{name}");
        // The same cost as reserved changes nothing.
        let key = fresh(name);
        let r = reserve(&app, &key, &limit, 4).await;
        let s = settle(&app, &key, &limit, &r.reservation, 4).await;
        assert_eq!((s.remaining, s.overdrawn), (6, false), "{name}");
    }
}

/// Only a check that consumes reserves: a rejected one, a cost of 0 and a
/// shadow-mode rejection carry no reservation.
async fn only_a_check_that_consumes_reserves(backend: Backend) {
    let app = app(backend).await;
    let limit = fixed_window(3, Duration::from_secs(3600));
    let key = fresh("consumes");
    assert!(reserve(&app, &key, &limit, 0).await.reservation.is_empty());
    let over = reserve(&app, &key, &limit, 4).await;
    assert!(!over.allowed && over.reservation.is_empty(), "{over:?}");
    assert_eq!(over.reason, Reason::CostExceedsLimit as i32);
    assert!(!reserve(&app, &key, &limit, 3).await.reservation.is_empty());
    let full = reserve(&app, &key, &limit, 1).await;
    assert!(!full.allowed && full.reservation.is_empty(), "{full:?}");

    let shadowed = |key: &str| CheckRequest {
        reserve: true,
        key: key.to_owned(),
        limit_source: Some(LimitSource::Policy("shadow2".into())),
        cost: Some(2),
    };
    let key = fresh("shadow");
    let mut ratelimit = app.ratelimit.clone();
    let first = ratelimit.check(timed(shadowed(&key))).await.unwrap();
    assert!(!first.into_inner().reservation.is_empty());
    let second = ratelimit
        .check(timed(shadowed(&key)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.reason, Reason::ShadowOverLimit as i32, "{second:?}");
    assert!(
        second.allowed && second.reservation.is_empty(),
        "{second:?}"
    );
}

/// A fixed window's reservation ends with its window; a sliding window's
/// gives back from the previous window, where it still weighs.
async fn a_settle_follows_the_charged_window(backend: Backend) {
    let app = app(backend).await;
    let second = Duration::from_secs(1);
    away_from_window_edge(second, Duration::from_millis(400)).await;
    let fixed = fixed_window(10, second);
    let sliding = sliding_window(10, second);
    let (fixed_key, sliding_key) = (fresh("fixed"), fresh("sliding"));
    let f = reserve(&app, &fixed_key, &fixed, 10).await;
    let s = reserve(&app, &sliding_key, &sliding, 10).await;
    assert!(f.allowed && s.allowed);
    // Early in the next window.
    away_from_window_edge(second, second).await;

    let done = settle(&app, &fixed_key, &fixed, &f.reservation, 0).await;
    assert_eq!(result(&done), SettleResult::Expired, "{done:?}");
    assert_eq!(done.remaining, 10);

    let before = check(&app, &sliding_key, &sliding, Some(0)).await.remaining;
    assert!(before < 5, "the previous window still weighs: {before}");
    let done = settle(&app, &sliding_key, &sliding, &s.reservation, 0).await;
    assert_eq!(result(&done), SettleResult::Settled, "{done:?}");
    assert_eq!(done.remaining, 10, "{done:?}");
}

/// Bad tokens and costs are INVALID_ARGUMENT naming each field; CheckBatch
/// does not reserve.
async fn bad_settles_name_the_field(backend: Backend) {
    let app = app(backend).await;
    let limit = fixed_window(10, Duration::from_secs(3600));
    let key = fresh("bad");
    let token = reserve(&app, &key, &limit, 5).await.reservation;
    let mut ratelimit = app.ratelimit.clone();
    for (req, field) in [
        (settling(&key, &limit, "", 1), "reservation"),
        (settling(&key, &limit, "not-a-token", 1), "reservation"),
        (
            settling(&key, &limit, &format!("{token}0"), 1),
            "reservation",
        ),
        (settling(&key, &limit, &token, 1001), "cost"),
        (settling("", &limit, &token, 1), "key"),
    ] {
        assert_bad_field(ratelimit.settle(timed(req)).await, field);
    }
    // Every bad field at once.
    let mut both = settling("", &limit, "x", 1);
    both.limit_source = None;
    let status = ratelimit.settle(timed(both)).await.unwrap_err();
    let fields = crate::harness::bad_fields(&status);
    for field in ["key", "limit", "reservation"] {
        assert!(fields.iter().any(|f| f == field), "{field} in {fields:?}");
    }
    let batch = ratelimit
        .check_batch(timed(CheckBatchRequest {
            checks: vec![request(&key, &limit, None), reserving(&key, &limit, 1)],
            all_or_nothing: false,
        }))
        .await;
    assert_bad_field(batch, "checks[1].reserve");
}

/// A Reset voids the reservations made before it: settling one gives
/// nothing back on top of the fresh budget, and a later reservation on the
/// new state settles as usual.
async fn a_reset_voids_earlier_reservations(backend: Backend) {
    let app = app(backend).await;
    away_from_window_edge(Duration::from_secs(3600), Duration::from_secs(10)).await;
    for (name, limit) in each_algorithm(10, Duration::from_secs(3600)) {
        let key = fresh(name);
        let before = reserve(&app, &key, &limit, 8).await;
        assert!(before.allowed, "{name}");
        app.ratelimit
            .clone()
            .reset(timed(ResetRequest {
                key: key.clone(),
                limit_source: Some(v1::reset_request::LimitSource::Limit(limit)),
            }))
            .await
            .expect("reset");
        let after = reserve(&app, &key, &limit, 3).await;
        assert_eq!(
            after.remaining, 7,
            "{name}: the full budget after the reset"
        );

        let s = settle(&app, &key, &limit, &before.reservation, 0).await;
        assert_eq!(result(&s), SettleResult::Expired, "{name}: {s:?}");
        assert_eq!(s.remaining, 7, "{name}: nothing given back");
        // A cost above the voided reservation is still consumed.
        let s = settle(&app, &key, &limit, &before.reservation, 10).await;
        assert_eq!(result(&s), SettleResult::Expired, "{name}: {s:?}");
        assert_eq!(s.remaining, 5, "{name}: 10 - 8 consumed");

        let s = settle(&app, &key, &limit, &after.reservation, 1).await;
        assert_eq!(result(&s), SettleResult::Settled, "{name}: {s:?}");
        assert_eq!(s.remaining, 7, "{name}: 2 of the new reservation back");
    }
}

/// 40 callers reserve 3 of 30 and use 1, each settled twice at once: one
/// settle of each counts, and the budget ends at 30 minus one per admitted
/// caller (at least 10: refunds can admit more).
async fn concurrent_reservations_settle_exactly(backend: Backend) {
    let app = app(backend).await;
    away_from_window_edge(Duration::from_secs(3600), Duration::from_secs(10)).await;
    let limit = fixed_window(30, Duration::from_secs(3600));
    let key = fresh("concurrent");
    let runs = (0..40).map(|_| {
        let (app, key) = (&app, &key);
        async move {
            let r = reserve(app, key, &limit, 3).await;
            if !r.allowed {
                return None;
            }
            let (a, b) = tokio::join!(
                settle(app, key, &limit, &r.reservation, 1),
                settle(app, key, &limit, &r.reservation, 1)
            );
            Some([result(&a), result(&b)])
        }
    });
    let done = futures::future::join_all(runs).await;
    let admitted: Vec<_> = done.into_iter().flatten().collect();
    for pair in &admitted {
        let mut sorted = pair.to_vec();
        sorted.sort_by_key(|r| *r as i32);
        assert_eq!(
            sorted,
            [SettleResult::Settled, SettleResult::AlreadySettled],
            "one settle of a reservation counts"
        );
    }
    assert!(admitted.len() >= 10, "{}", admitted.len());
    let left = check(&app, &key, &limit, Some(0)).await.remaining;
    assert_eq!(left, 30 - admitted.len() as u64);
}

crate::conformance!(
    a_settle_gives_back_what_was_not_used,
    a_settle_above_the_reservation_consumes_the_rest,
    only_a_check_that_consumes_reserves,
    a_settle_follows_the_charged_window,
    bad_settles_name_the_field,
    concurrent_reservations_settle_exactly,
    a_reset_voids_earlier_reservations,
);
