//! `WatchTop`: the current period's top N, sent once at once and again at
//! every change. Each stream reads the top every
//! `leaderboard.watch_interval` and sends it when it differs from what it
//! sent last (a rollover to a new period is a change). The stream ends with
//! NOT_FOUND when the board is deleted, and with UNAVAILABLE when the store
//! fails: the caller watches again.

use std::sync::Arc;
use std::time::Duration;

use futures::Stream;

use super::convert::record;
use super::{Handler, board_id, no_board};
use crate::error::Error;
use crate::grpc::Ctx;
use crate::grpc::slots::Slot;
use crate::keys::Tenant;
use crate::proto::datalayer::leaderboard::v1 as pb;
use crate::services::leaderboard::store::{Page, Store, Which};
use crate::store::StoreError;
use crate::validate;

struct Watcher {
    store: Arc<dyn Store>,
    tenant: Tenant,
    board: String,
    limit: usize,
    interval: Duration,
    store_timeout: Duration,
    last: Option<Page>,
    first: bool,
    ended: bool,
    _slot: Slot,
}

impl Watcher {
    async fn read(&self) -> Result<Page, Error> {
        let read = self
            .store
            .top(&self.tenant, &self.board, Which::Current, None, self.limit);
        match tokio::time::timeout(self.store_timeout, read).await {
            Ok(Ok(Some(page))) => Ok(page),
            Ok(Ok(None)) => Err(no_board(&self.board)),
            Ok(Err(e)) => Err(Error::Store(e)),
            Err(_) => Err(Error::Store(StoreError::unavailable(
                "the store did not answer a watch's read within redis.command_timeout",
            ))),
        }
    }

    async fn next(&mut self) -> Option<Result<pb::WatchTopResponse, Error>> {
        loop {
            if self.ended {
                return None;
            }
            if !self.first {
                tokio::time::sleep(self.interval).await;
            }
            self.first = false;
            let page = match self.read().await {
                Ok(page) => page,
                Err(e) => {
                    self.ended = true;
                    return Some(Err(e));
                }
            };
            // The cursor (whether records follow) is no change of the top.
            let same = self
                .last
                .as_ref()
                .is_some_and(|last| last.records == page.records && last.period == page.period);
            if !same {
                let response = pb::WatchTopResponse {
                    records: page.records.iter().map(record).collect(),
                    period_id: page.period.clone(),
                };
                self.last = Some(page);
                return Some(Ok(response));
            }
        }
    }
}

impl Handler {
    pub(super) async fn watch_top(
        &self,
        ctx: Ctx,
        req: pb::WatchTopRequest,
    ) -> Result<impl Stream<Item = Result<pb::WatchTopResponse, Error>> + Send + 'static, Error>
    {
        let (_, limit) = validate::all((
            board_id(&req.leaderboard_id, "leaderboard_id"),
            self.settings.watch_limit(req.limit, "limit"),
        ))?;
        let slot = self.watches.take(self.settings.max_watches).map_err(|open| {
            Error::ResourceExhausted(format!(
                "{open} WatchTop streams are open on this instance, the most leaderboard.max_watches allows; close one or watch through another instance"
            ))
        })?;
        ctx.store(self.store.get(&ctx.tenant, &req.leaderboard_id))
            .await?
            .ok_or_else(|| no_board(&req.leaderboard_id))?;
        let watcher = Watcher {
            store: self.store.clone(),
            tenant: ctx.tenant.clone(),
            board: req.leaderboard_id,
            limit,
            interval: self.settings.watch_interval,
            store_timeout: ctx.store_timeout(),
            last: None,
            first: true,
            ended: false,
            _slot: slot,
        };
        Ok(futures::stream::unfold(watcher, |mut w| async move {
            w.next().await.map(|item| (item, w))
        }))
    }
}
