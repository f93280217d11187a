//! Resetting boards and WatchTop: every write lands in exactly one period
//! across rollovers, past periods stay readable, and WatchTop follows the
//! top N until the board is deleted.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use datalayer::proto::datalayer::leaderboard::v1 as pb;
use tonic::Code;

use super::{board, client, create, owners, sub};
use crate::harness::{Backend, timed};
use crate::invariants::fresh;

/// A board that resets every second, written by four tasks for over two
/// seconds: each write is in exactly the one period its answer named, and
/// every period is read back through ListPeriods and Top.
async fn each_write_lands_in_exactly_one_period(backend: Backend) {
    let app = super::app(backend).await;
    let id = fresh("roll");
    let mut b = board(&id);
    b.reset_cron = "* * * * * *".into();
    b.keep_periods = 20;
    create(&app, b).await;
    let until = Instant::now() + Duration::from_millis(2300);
    let tasks = (0..4).map(|t| {
        let channel = app.channel.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let mut c = pb::leaderboard_service_client::LeaderboardServiceClient::new(channel);
            let mut placed = Vec::new();
            let mut n = 0;
            while Instant::now() < until {
                let owner = format!("t{t}-{n}");
                let answer = c.submit(timed(sub(&id, &owner, n))).await.unwrap();
                placed.push((owner, answer.into_inner().period_id));
                n += 1;
            }
            placed
        })
    });
    let mut written: BTreeMap<String, String> = BTreeMap::new();
    for task in tasks {
        written.extend(task.await.unwrap());
    }
    let mut c = client(&app);
    let periods = c
        .list_periods(timed(pb::ListPeriodsRequest {
            leaderboard_id: id.clone(),
        }))
        .await
        .unwrap()
        .into_inner()
        .periods;
    let named: std::collections::BTreeSet<&String> = written.values().collect();
    assert!(named.len() >= 2, "the writes spanned a rollover: {named:?}");
    let mut found: BTreeMap<String, String> = BTreeMap::new();
    for p in &periods {
        let mut cursor = String::new();
        loop {
            let page = c
                .top(timed(pb::TopRequest {
                    leaderboard_id: id.clone(),
                    limit: 1000,
                    cursor,
                    period_id: p.id.clone(),
                }))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(page.period_id, p.id);
            for owner in owners(&page.records) {
                assert!(
                    found.insert(owner.clone(), p.id.clone()).is_none(),
                    "{owner} is in two periods"
                );
            }
            if page.next_cursor.is_empty() {
                break;
            }
            cursor = page.next_cursor;
        }
        let page_owners = found.values().filter(|v| **v == p.id).count() as u64;
        assert_eq!(page_owners, p.owners, "period {} counts its owners", p.id);
        if let (Some(start), Some(end)) = (&p.start_time, &p.end_time) {
            assert_eq!(end.seconds - start.seconds, 1);
        }
    }
    assert_eq!(found, written, "every write is where its answer said");
}

/// WatchTop sends the top at once, again after a change, and ends with
/// NOT_FOUND when the board is deleted.
async fn watch_top_follows_changes_until_deleted(backend: Backend) {
    let app = super::app(backend).await;
    let id = fresh("watch");
    create(&app, board(&id)).await;
    let mut c = client(&app);
    let mut stream = c
        .watch_top(pb::WatchTopRequest {
            leaderboard_id: id.clone(),
            limit: 2,
        })
        .await
        .unwrap()
        .into_inner();
    let wait = Duration::from_secs(5);
    let first = tokio::time::timeout(wait, stream.message()).await.unwrap();
    assert!(first.unwrap().unwrap().records.is_empty());
    super::submit(&app, sub(&id, "amy", 7)).await;
    let second = tokio::time::timeout(wait, stream.message()).await.unwrap();
    assert_eq!(owners(&second.unwrap().unwrap().records), ["amy"]);
    c.delete_leaderboard(timed(pb::DeleteLeaderboardRequest { id: id.clone() }))
        .await
        .unwrap();
    let end = tokio::time::timeout(wait, stream.message()).await.unwrap();
    assert_eq!(end.unwrap_err().code(), Code::NotFound);
    let missing = c
        .watch_top(pb::WatchTopRequest {
            leaderboard_id: id,
            limit: 2,
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
}

crate::conformance!(
    each_write_lands_in_exactly_one_period,
    watch_top_follows_changes_until_deleted,
);
