//! LeaderboardService conformance on memory, Redis and a cluster: ordering
//! and every tie-break, operators under concurrency, keyset pages under a
//! concurrent writer, periods at rollover, idempotent retries, definitions,
//! the score bound and bad input. WatchTop and periods: `watch.rs`.

mod periods;

use std::collections::{BTreeMap, BTreeSet};

use crate::harness::Channel;
use datalayer::proto::datalayer::leaderboard::v1::{
    self as pb, leaderboard_service_client::LeaderboardServiceClient,
};
use tonic::Code;
use tonic_types::StatusExt;

use crate::harness::{Backend, TestApp, assert_bad_field, timed};
use crate::invariants::fresh;

pub const LIMIT: i64 = (1 << 53) - 1;

/// The app these tests run against. Many concurrent scripts share one
/// Redis with the whole suite on two cores: a store timeout of a second
/// keeps a busy moment from reading as an outage (the outage tests set
/// their own).
pub async fn app(backend: Backend) -> TestApp {
    crate::harness::spawn_app_with(backend, |s| {
        s.redis.command_timeout = std::time::Duration::from_secs(1)
    })
    .await
}

pub fn client(app: &TestApp) -> LeaderboardServiceClient<Channel> {
    LeaderboardServiceClient::new(app.channel.clone())
}

pub fn board(id: &str) -> pb::Leaderboard {
    pb::Leaderboard {
        id: id.into(),
        ..Default::default()
    }
}

pub async fn create(app: &TestApp, b: pb::Leaderboard) -> pb::Leaderboard {
    client(app)
        .create_leaderboard(timed(pb::CreateLeaderboardRequest {
            leaderboard: Some(b),
        }))
        .await
        .expect("create answers")
        .into_inner()
        .leaderboard
        .expect("a board")
}

pub fn sub(board: &str, owner: &str, score: i64) -> pb::SubmitRequest {
    pb::SubmitRequest {
        leaderboard_id: board.into(),
        owner_id: owner.into(),
        score,
        ..Default::default()
    }
}

pub async fn submit(app: &TestApp, req: pb::SubmitRequest) -> pb::SubmitResponse {
    client(app)
        .submit(timed(req))
        .await
        .expect("submit answers")
        .into_inner()
}

pub async fn top(app: &TestApp, board: &str, limit: u32, cursor: &str) -> pb::TopResponse {
    client(app)
        .top(timed(pb::TopRequest {
            leaderboard_id: board.into(),
            limit,
            cursor: cursor.into(),
            period_id: String::new(),
        }))
        .await
        .expect("top answers")
        .into_inner()
}

pub fn owners(records: &[pb::Record]) -> Vec<String> {
    records.iter().map(|r| r.owner_id.clone()).collect()
}

/// Ranks follow (score, subscore) in the board's order, then its tie-break:
/// `earliest` puts who got there first ahead, `latest` the reverse,
/// `owner_id` the lower id; ranks are 1, 2, 3... on every page.
async fn order_and_every_tie_break(backend: Backend) {
    let app = app(backend).await;
    let cases = [
        (
            pb::SortOrder::Descending,
            pb::TieBreak::Earliest,
            ["b", "c", "a", "d"],
        ),
        (
            pb::SortOrder::Descending,
            pb::TieBreak::Latest,
            ["c", "b", "a", "d"],
        ),
        (
            pb::SortOrder::Descending,
            pb::TieBreak::OwnerId,
            ["b", "c", "a", "d"],
        ),
        (
            pb::SortOrder::Ascending,
            pb::TieBreak::Earliest,
            ["d", "a", "b", "c"],
        ),
    ];
    for (sort, tie, want) in cases {
        let id = fresh("order");
        let mut b = board(&id);
        b.sort_order = sort as i32;
        b.tie_break = tie as i32;
        b.operator = pb::Operator::Set as i32;
        create(&app, b).await;
        // b and c tie on (10, 5), b first; a has (10, 1); d is negative.
        for (owner, score, subscore) in [("b", 10, 5), ("c", 10, 5), ("a", 10, 1), ("d", -3, 0)] {
            let mut s = sub(&id, owner, score);
            s.subscore = subscore;
            submit(&app, s).await;
        }
        let page = top(&app, &id, 10, "").await;
        assert_eq!(owners(&page.records), want, "{sort:?} {tie:?}");
        let ranks: Vec<u64> = page.records.iter().map(|r| r.rank).collect();
        assert_eq!(ranks, [1, 2, 3, 4]);
        assert!(page.next_cursor.is_empty());
    }
}

/// `best` keeps the better of record and submission: 100 concurrent
/// submits end at the highest, and every one is counted.
async fn best_never_decreases_under_concurrent_submits(backend: Backend) {
    let app = app(backend).await;
    let id = fresh("best");
    create(&app, board(&id)).await;
    let scores: Vec<i64> = (0..100).map(|i| (i * 37) % 101).collect();
    let calls = scores.iter().map(|&s| {
        let app = &app;
        let id = id.clone();
        async move { submit(app, sub(&id, "trader", s)).await }
    });
    let answers = futures::future::join_all(calls).await;
    let max = *scores.iter().max().unwrap();
    let rank = client(&app)
        .rank(timed(pb::RankRequest {
            leaderboard_id: id.clone(),
            owner_id: "trader".into(),
            period_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    let record = rank.record.unwrap();
    assert_eq!(record.score, max);
    assert_eq!(record.submissions, 100);
    assert_eq!(rank.owners, 1);
    // Each answer shows a record at least as good as its own submission.
    for (a, s) in answers.iter().zip(&scores) {
        assert!(a.record.as_ref().unwrap().score >= *s);
    }
    // A worse score is no improvement and changes nothing.
    let worse = submit(&app, sub(&id, "trader", max - 1)).await;
    assert!(!worse.improved);
    assert_eq!(worse.record.unwrap().score, max);
}

/// 100 concurrent increments sum exactly; decrement floors at the board's
/// floor.
async fn increments_sum_exactly_and_decrements_floor(backend: Backend) {
    let app = app(backend).await;
    let id = fresh("incr");
    let mut b = board(&id);
    b.operator = pb::Operator::Increment as i32;
    b.decrement_floor = -5;
    create(&app, b).await;
    let calls = (1..=100).map(|i| {
        let app = &app;
        let id = id.clone();
        async move { submit(app, sub(&id, "p", i)).await }
    });
    futures::future::join_all(calls).await;
    let page = top(&app, &id, 10, "").await;
    assert_eq!(page.records[0].score, 5050);
    let mut down = sub(&id, "p", 6000);
    down.operator = pb::Operator::Decrement as i32;
    let floored = submit(&app, down).await;
    assert_eq!(floored.record.unwrap().score, -5);
}

/// Paging with a keyset cursor while another task keeps moving some
/// owners: every owner that stayed in place is returned exactly once.
async fn keyset_pages_return_every_stable_owner_once(backend: Backend) {
    let app = app(backend).await;
    let id = fresh("pages");
    let mut b = board(&id);
    b.operator = pb::Operator::Set as i32;
    create(&app, b).await;
    let stable: BTreeSet<String> = (0..120).map(|i| format!("s{i:03}")).collect();
    for (i, owner) in stable.iter().enumerate() {
        submit(&app, sub(&id, owner, (i as i64) * 10)).await;
    }
    let writer = {
        let app_channel = app.channel.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let mut c = LeaderboardServiceClient::new(app_channel);
            for n in 0..200i64 {
                let owner = format!("m{}", n % 7);
                let _ = c.submit(timed(sub(&id, &owner, (n * 7919) % 1300))).await;
            }
        })
    };
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = top(&app, &id, 7, &cursor).await;
        seen.extend(owners(&page.records));
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
    }
    writer.await.unwrap();
    let stable_seen: Vec<&String> = seen.iter().filter(|o| o.starts_with('s')).collect();
    let unique: BTreeSet<&String> = stable_seen.iter().copied().collect();
    assert_eq!(stable_seen.len(), unique.len(), "an owner came twice");
    assert_eq!(unique.len(), stable.len(), "an owner was skipped");
}

/// AroundOwner, Records, Rank and DeleteRecord read and remove exactly.
async fn around_records_rank_and_delete(backend: Backend) {
    let app = app(backend).await;
    let id = fresh("around");
    create(&app, board(&id)).await;
    for i in 0..10 {
        submit(&app, sub(&id, &format!("o{i}"), i * 100)).await;
    }
    let mut c = client(&app);
    let around = c
        .around_owner(timed(pb::AroundOwnerRequest {
            leaderboard_id: id.clone(),
            owner_id: "o5".into(),
            above: 2,
            below: 1,
            period_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(around.found);
    assert_eq!(owners(&around.records), ["o7", "o6", "o5", "o4"]);
    assert_eq!(around.records[2].rank, 5);
    let edge = c
        .around_owner(timed(pb::AroundOwnerRequest {
            leaderboard_id: id.clone(),
            owner_id: "o9".into(),
            above: 3,
            below: 1,
            period_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(owners(&edge.records), ["o9", "o8"]);
    let records = c
        .records(timed(pb::RecordsRequest {
            leaderboard_id: id.clone(),
            owner_ids: vec!["o1".into(), "nobody".into(), "o8".into()],
            period_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    let got: BTreeMap<String, u64> = records
        .records
        .iter()
        .map(|r| (r.owner_id.clone(), r.rank))
        .collect();
    assert_eq!(got, BTreeMap::from([("o1".into(), 9), ("o8".into(), 2)]));
    let deleted = c
        .delete_record(timed(pb::DeleteRecordRequest {
            leaderboard_id: id.clone(),
            owner_id: "o9".into(),
            period_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.deleted);
    let page = top(&app, &id, 1, "").await;
    assert_eq!(owners(&page.records), ["o8"]);
    assert_eq!(page.records[0].rank, 1);
    let none = c
        .around_owner(timed(pb::AroundOwnerRequest {
            leaderboard_id: id.clone(),
            owner_id: "o9".into(),
            above: 1,
            below: 1,
            period_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(!none.found && none.records.is_empty());
}

/// A retried Submit with the same idempotency key is applied once and
/// answers the first answer again; another key applies again.
async fn idempotent_retries_apply_once(backend: Backend) {
    let app = app(backend).await;
    let id = fresh("idem");
    let mut b = board(&id);
    b.operator = pb::Operator::Increment as i32;
    create(&app, b).await;
    let mut req = sub(&id, "bot", 5);
    req.idempotency_key = "trade-1".into();
    let first = submit(&app, req.clone()).await;
    let again = submit(&app, req.clone()).await;
    assert!(!first.replayed);
    assert!(again.replayed);
    assert_eq!(again.record, first.record);
    req.idempotency_key = "trade-2".into();
    let other = submit(&app, req).await;
    assert_eq!(other.record.unwrap().score, 10);
}

/// Create, Get, Update, List and Delete: ids are unique, fixed fields stay
/// fixed, and a board created again after a delete starts empty.
async fn definitions_are_managed(backend: Backend) {
    let app = app(backend).await;
    let mut c = client(&app);
    let id = fresh("def");
    let mut b = board(&id);
    b.metadata = b"weekly pnl".to_vec();
    let made = create(&app, b.clone()).await;
    assert_eq!(made.sort_order, pb::SortOrder::Descending as i32);
    assert_eq!(made.operator, pb::Operator::Best as i32);
    let again = c
        .create_leaderboard(timed(pb::CreateLeaderboardRequest {
            leaderboard: Some(b.clone()),
        }))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists);
    submit(&app, sub(&id, "x", 1)).await;
    let mut changed = b.clone();
    changed.metadata = b"daily".to_vec();
    changed.keep_periods = 3;
    let updated = c
        .update_leaderboard(timed(pb::UpdateLeaderboardRequest {
            leaderboard: Some(changed.clone()),
        }))
        .await
        .unwrap()
        .into_inner()
        .leaderboard
        .unwrap();
    assert_eq!(updated.metadata, b"daily");
    // A write after the update uses the new definition (no stale cache).
    assert_eq!(
        submit(&app, sub(&id, "x", 2)).await.record.unwrap().score,
        2
    );
    changed.sort_order = pb::SortOrder::Ascending as i32;
    let fixed = c
        .update_leaderboard(timed(pb::UpdateLeaderboardRequest {
            leaderboard: Some(changed),
        }))
        .await;
    assert_bad_field(fixed, "leaderboard.sort_order");
    let got = c
        .get_leaderboard(timed(pb::GetLeaderboardRequest { id: id.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.leaderboard.unwrap().keep_periods, 3);
    assert_eq!(got.current_period.unwrap().owners, 1);
    // Lists page through the tenant's boards in id order.
    let ids: Vec<String> = (0..3).map(|i| format!("{id}-{i}")).collect();
    for i in &ids {
        create(&app, board(i)).await;
    }
    let mut listed = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_leaderboards(timed(pb::ListLeaderboardsRequest {
                page_size: 2,
                page_token: token,
            }))
            .await
            .unwrap()
            .into_inner();
        listed.extend(page.leaderboards.into_iter().map(|l| l.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    for i in ids.iter().chain([&id]) {
        assert_eq!(
            listed.iter().filter(|l| *l == i).count(),
            1,
            "{i} listed once"
        );
    }
    let deleted = c
        .delete_leaderboard(timed(pb::DeleteLeaderboardRequest { id: id.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.deleted);
    let gone = c.submit(timed(sub(&id, "x", 1))).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    create(&app, b).await;
    assert!(top(&app, &id, 10, "").await.records.is_empty());
}

/// Scores within ±(2^53 − 1) rank exactly; beyond is refused, and an
/// increment that would pass the bound writes nothing.
async fn scores_at_the_bound_stay_exact(backend: Backend) {
    let app = app(backend).await;
    let id = fresh("bound");
    let mut b = board(&id);
    b.operator = pb::Operator::Increment as i32;
    create(&app, b).await;
    submit(&app, sub(&id, "hi", LIMIT - 1)).await;
    submit(&app, sub(&id, "hi2", LIMIT - 2)).await;
    submit(&app, sub(&id, "lo", -LIMIT)).await;
    let page = top(&app, &id, 10, "").await;
    assert_eq!(owners(&page.records), ["hi", "hi2", "lo"]);
    assert_eq!(page.records[0].score, LIMIT - 1);
    let over = client(&app)
        .submit(timed(sub(&id, "hi", 2)))
        .await
        .unwrap_err();
    assert_eq!(over.code(), Code::FailedPrecondition, "{over:?}");
    assert_eq!(top(&app, &id, 1, "").await.records[0].score, LIMIT - 1);
    assert_bad_field(
        client(&app).submit(timed(sub(&id, "x", LIMIT + 1))).await,
        "score",
    );
}

/// Every bad field is named at once; unknown boards are NOT_FOUND.
async fn bad_input_names_every_field(backend: Backend) {
    let app = app(backend).await;
    let mut c = client(&app);
    let status = c
        .submit(timed(pb::SubmitRequest {
            leaderboard_id: "{bad}".into(),
            owner_id: String::new(),
            score: i64::MIN,
            subscore: i64::MAX,
            operator: 99,
            metadata: vec![0; 1 << 20],
            idempotency_key: "k".repeat(4096),
        }))
        .await
        .unwrap_err();
    let fields: BTreeSet<String> = status
        .get_details_bad_request()
        .unwrap()
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    let want = [
        "leaderboard_id",
        "owner_id",
        "score",
        "subscore",
        "operator",
        "metadata",
        "idempotency_key",
    ];
    assert_eq!(fields, want.into_iter().map(String::from).collect());
    let mut bad = board("b");
    bad.reset_cron = "every day".into();
    bad.time_zone = "Mars/Base".into();
    bad.keep_periods = 1_000_000;
    let made = c
        .create_leaderboard(timed(pb::CreateLeaderboardRequest {
            leaderboard: Some(bad),
        }))
        .await;
    assert_bad_field(made, "leaderboard.time_zone");
    let made = c
        .create_leaderboard(timed(pb::CreateLeaderboardRequest { leaderboard: None }))
        .await;
    assert_bad_field(made, "leaderboard");
    let page = c
        .top(timed(pb::TopRequest {
            leaderboard_id: "b".into(),
            limit: 100_000,
            cursor: "zz".into(),
            period_id: "yesterday".into(),
        }))
        .await;
    assert_bad_field(page, "cursor");
    let missing = c
        .top(timed(pb::TopRequest {
            leaderboard_id: fresh("none"),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
}

crate::conformance!(
    order_and_every_tie_break,
    best_never_decreases_under_concurrent_submits,
    increments_sum_exactly_and_decrements_floor,
    keyset_pages_return_every_stable_owner_once,
    around_records_rank_and_delete,
    idempotent_retries_apply_once,
    definitions_are_managed,
    scores_at_the_bound_stay_exact,
    bad_input_names_every_field,
);

/// Every RPC of LeaderboardService (see `invariants`).
pub fn workload(app: &TestApp) -> futures::future::BoxFuture<'_, Result<(), tonic::Status>> {
    Box::pin(async move {
        let mut c = client(app);
        let forever = fresh("w");
        let weekly = fresh("wk");
        c.create_leaderboard(timed(pb::CreateLeaderboardRequest {
            leaderboard: Some(board(&forever)),
        }))
        .await?;
        let mut resets = board(&weekly);
        resets.reset_cron = "0 0 * * MON".into();
        resets.keep_periods = 2;
        c.create_leaderboard(timed(pb::CreateLeaderboardRequest {
            leaderboard: Some(resets.clone()),
        }))
        .await?;
        resets.metadata = b"m".to_vec();
        c.update_leaderboard(timed(pb::UpdateLeaderboardRequest {
            leaderboard: Some(resets),
        }))
        .await?;
        for id in [&forever, &weekly] {
            let mut s = sub(id, "a", 3);
            s.idempotency_key = "k".into();
            c.submit(timed(s)).await?;
            c.submit(timed(sub(id, "b", 4))).await?;
        }
        c.get_leaderboard(timed(pb::GetLeaderboardRequest {
            id: forever.clone(),
        }))
        .await?;
        c.list_leaderboards(timed(pb::ListLeaderboardsRequest::default()))
            .await?;
        c.top(timed(pb::TopRequest {
            leaderboard_id: weekly.clone(),
            limit: 1,
            ..Default::default()
        }))
        .await?;
        c.around_owner(timed(pb::AroundOwnerRequest {
            leaderboard_id: weekly.clone(),
            owner_id: "a".into(),
            above: 1,
            below: 1,
            ..Default::default()
        }))
        .await?;
        c.records(timed(pb::RecordsRequest {
            leaderboard_id: weekly.clone(),
            owner_ids: vec!["a".into(), "b".into()],
            ..Default::default()
        }))
        .await?;
        c.rank(timed(pb::RankRequest {
            leaderboard_id: forever.clone(),
            owner_id: "a".into(),
            ..Default::default()
        }))
        .await?;
        c.delete_record(timed(pb::DeleteRecordRequest {
            leaderboard_id: forever.clone(),
            owner_id: "b".into(),
            ..Default::default()
        }))
        .await?;
        c.list_periods(timed(pb::ListPeriodsRequest {
            leaderboard_id: weekly.clone(),
        }))
        .await?;
        let mut watch = c
            .watch_top(timed(pb::WatchTopRequest {
                leaderboard_id: weekly,
                limit: 5,
            }))
            .await?
            .into_inner();
        watch.message().await?;
        let scratch = fresh("del");
        c.create_leaderboard(timed(pb::CreateLeaderboardRequest {
            leaderboard: Some(board(&scratch)),
        }))
        .await?;
        c.delete_leaderboard(timed(pb::DeleteLeaderboardRequest { id: scratch }))
            .await?;
        Ok(())
    })
}
