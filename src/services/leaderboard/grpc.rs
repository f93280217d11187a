//! `datalayer.leaderboard.v1.LeaderboardService`: the wire ↔ the domain,
//! then the store. Definitions and wire conversion are in `grpc/convert.rs`,
//! `WatchTop` in `grpc/watch.rs`.

mod convert;
mod watch;

use std::sync::Arc;

use super::model::{Submission, parse_period, prefix_len};
use super::settings::{self, Settings};
use super::store::{Created, Limits, Store, Submitted, Which};
use crate::error::Error;
use crate::grpc::Ctx;
use crate::proto::datalayer::leaderboard::v1 as pb;
use crate::validate::{self, FieldViolation};
use convert::{board, operator, record};

pub struct Handler {
    store: Arc<dyn Store>,
    settings: Settings,
    /// `WatchTop` streams open now (bounded by `leaderboard.max_watches`).
    watches: crate::grpc::slots::Slots,
}

crate::grpc_service! {
    pb::leaderboard_service_server::{LeaderboardService, LeaderboardServiceServer} for Handler {
        unary CreateLeaderboard => create_leaderboard(pb::CreateLeaderboardRequest) -> pb::CreateLeaderboardResponse;
        unary UpdateLeaderboard => update_leaderboard(pb::UpdateLeaderboardRequest) -> pb::UpdateLeaderboardResponse;
        unary GetLeaderboard => get_leaderboard(pb::GetLeaderboardRequest) -> pb::GetLeaderboardResponse;
        unary DeleteLeaderboard => delete_leaderboard(pb::DeleteLeaderboardRequest) -> pb::DeleteLeaderboardResponse;
        unary ListLeaderboards => list_leaderboards(pb::ListLeaderboardsRequest) -> pb::ListLeaderboardsResponse;
        unary Submit => submit(pb::SubmitRequest) -> pb::SubmitResponse;
        unary Top => top(pb::TopRequest) -> pb::TopResponse;
        unary AroundOwner => around_owner(pb::AroundOwnerRequest) -> pb::AroundOwnerResponse;
        unary Records => records(pb::RecordsRequest) -> pb::RecordsResponse;
        unary Rank => rank(pb::RankRequest) -> pb::RankResponse;
        unary DeleteRecord => delete_record(pb::DeleteRecordRequest) -> pb::DeleteRecordResponse;
        unary ListPeriods => list_periods(pb::ListPeriodsRequest) -> pb::ListPeriodsResponse;
        stream WatchTop => watch_top(pb::WatchTopRequest) -> pb::WatchTopResponse as WatchTopStream;
    }
}

fn no_board(id: &str) -> Error {
    Error::NotFound(format!(
        "leaderboard {id} does not exist; create it with CreateLeaderboard"
    ))
}

/// A period named by a caller: empty is the current one.
fn which(id: &str, field: &str) -> Result<Which, FieldViolation> {
    if id.is_empty() {
        return Ok(Which::Current);
    }
    parse_period(id).map(Which::Started).ok_or_else(|| {
        FieldViolation::new(
            field,
            format!(
                "must be a period id from ListPeriods or a response, got {}",
                validate::quote(id)
            ),
        )
    })
}

fn board_id(id: &str, field: &str) -> Result<(), FieldViolation> {
    validate::name(id, field)
}

impl Handler {
    pub fn new(store: Arc<dyn Store>, settings: Settings) -> Self {
        Self {
            store,
            settings,
            watches: Default::default(),
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            max_boards: self.settings.max_boards,
            max_owners: self.settings.max_owners,
            idempotency_ms: self.settings.idempotency_window.as_millis() as u64,
        }
    }

    /// The board and owner of a read.
    fn target(&self, id: &str, owner: &str, period: &str) -> Result<Which, Error> {
        let (_, _, which) = validate::all((
            board_id(id, "leaderboard_id"),
            self.settings.owner(owner, "owner_id"),
            which(period, "period_id"),
        ))?;
        Ok(which)
    }

    async fn create_leaderboard(
        &self,
        ctx: Ctx,
        req: pb::CreateLeaderboardRequest,
    ) -> Result<pb::CreateLeaderboardResponse, Error> {
        let def = convert::definition(&self.settings, req.leaderboard.as_ref(), None)?;
        ctx.audit_target(def.id.clone());
        match ctx
            .store(self.store.create(&ctx.tenant, def.clone(), self.limits()))
            .await?
        {
            Created::Created(def) => Ok(pb::CreateLeaderboardResponse {
                leaderboard: Some(board(&def)),
            }),
            Created::Exists => Err(Error::AlreadyExists(format!(
                "leaderboard {} already exists",
                def.id
            ))),
            Created::Full => Err(Error::ResourceExhausted(format!(
                "this tenant has {} leaderboards, the most leaderboard.max_boards allows; delete one first",
                self.settings.max_boards
            ))),
        }
    }

    async fn update_leaderboard(
        &self,
        ctx: Ctx,
        req: pb::UpdateLeaderboardRequest,
    ) -> Result<pb::UpdateLeaderboardResponse, Error> {
        let id = req.leaderboard.as_ref().map_or("", |l| l.id.as_str());
        board_id(id, "leaderboard.id")?;
        let old = ctx
            .store(self.store.get(&ctx.tenant, id))
            .await?
            .ok_or_else(|| no_board(id))?;
        let def = convert::definition(&self.settings, req.leaderboard.as_ref(), Some(&old))?;
        ctx.audit_target(def.id.clone());
        let def = ctx
            .store(self.store.update(&ctx.tenant, def))
            .await?
            .ok_or_else(|| no_board(id))?;
        Ok(pb::UpdateLeaderboardResponse {
            leaderboard: Some(board(&def)),
        })
    }

    async fn get_leaderboard(
        &self,
        ctx: Ctx,
        req: pb::GetLeaderboardRequest,
    ) -> Result<pb::GetLeaderboardResponse, Error> {
        board_id(&req.id, "id")?;
        let def = ctx
            .store(self.store.get(&ctx.tenant, &req.id))
            .await?
            .ok_or_else(|| no_board(&req.id))?;
        let periods = ctx
            .store(self.store.periods(&ctx.tenant, &req.id))
            .await?
            .ok_or_else(|| no_board(&req.id))?;
        Ok(pb::GetLeaderboardResponse {
            leaderboard: Some(board(&def)),
            current_period: periods.first().map(convert::period),
        })
    }

    async fn delete_leaderboard(
        &self,
        ctx: Ctx,
        req: pb::DeleteLeaderboardRequest,
    ) -> Result<pb::DeleteLeaderboardResponse, Error> {
        board_id(&req.id, "id")?;
        ctx.audit_target(req.id.clone());
        let deleted = ctx.store(self.store.delete(&ctx.tenant, &req.id)).await?;
        Ok(pb::DeleteLeaderboardResponse { deleted })
    }

    async fn list_leaderboards(
        &self,
        ctx: Ctx,
        req: pb::ListLeaderboardsRequest,
    ) -> Result<pb::ListLeaderboardsResponse, Error> {
        let after = (!req.page_token.is_empty()).then_some(req.page_token.as_str());
        let (limit, _) = validate::all((
            self.settings.page(req.page_size, 100, "page_size"),
            after.map_or(Ok(()), |a| board_id(a, "page_token")),
        ))?;
        let mut defs = ctx
            .store(self.store.list(&ctx.tenant, after, limit))
            .await?;
        let more = defs.len() > limit;
        defs.truncate(limit);
        Ok(pb::ListLeaderboardsResponse {
            next_page_token: if more {
                defs.last().map(|d| d.id.clone()).unwrap_or_default()
            } else {
                String::new()
            },
            leaderboards: defs.iter().map(board).collect(),
        })
    }

    async fn submit(&self, ctx: Ctx, req: pb::SubmitRequest) -> Result<pb::SubmitResponse, Error> {
        let s = &self.settings;
        let (_, _, score, subscore, _, op, _) = validate::all((
            board_id(&req.leaderboard_id, "leaderboard_id"),
            s.owner(&req.owner_id, "owner_id"),
            settings::score(req.score, "score"),
            settings::score(req.subscore, "subscore"),
            s.metadata(&req.metadata, "metadata"),
            operator(req.operator, "operator"),
            s.idempotency_key(&req.idempotency_key, "idempotency_key"),
        ))?;
        let sub = Submission {
            owner_id: req.owner_id,
            score,
            subscore,
            metadata: req.metadata.to_vec(),
            operator: op,
            idempotency_key: req.idempotency_key,
        };
        let board = &req.leaderboard_id;
        match ctx
            .store(self.store.submit(&ctx.tenant, board, &sub, self.limits()))
            .await?
        {
            Submitted::Done(done) => Ok(pb::SubmitResponse {
                record: Some(record(&done.record)),
                previous_rank: done.previous_rank,
                improved: done.improved,
                period_id: done.period,
                replayed: done.replayed,
            }),
            Submitted::NoBoard => Err(no_board(board)),
            Submitted::Full => Err(Error::ResourceExhausted(format!(
                "leaderboard {board} holds {} owners this period, the most leaderboard.max_owners allows",
                s.max_owners
            ))),
            Submitted::OutOfRange => Err(Error::FailedPrecondition(format!(
                "the record of {} would pass ±(2^53 − 1) and lose exactness; nothing was written",
                validate::quote(&sub.owner_id)
            ))),
        }
    }

    async fn top(&self, ctx: Ctx, req: pb::TopRequest) -> Result<pb::TopResponse, Error> {
        let (_, limit, which, cursor) = validate::all((
            board_id(&req.leaderboard_id, "leaderboard_id"),
            self.settings.page(req.limit, 10, "limit"),
            which(&req.period_id, "period_id"),
            convert::cursor_in(&req.cursor, max_cursor_bytes(&self.settings), "cursor"),
        ))?;
        let page = ctx
            .store(self.store.top(
                &ctx.tenant,
                &req.leaderboard_id,
                which,
                cursor.as_deref(),
                limit,
            ))
            .await?
            .ok_or_else(|| no_board(&req.leaderboard_id))?;
        Ok(pb::TopResponse {
            records: page.records.iter().map(record).collect(),
            next_cursor: page
                .next
                .as_deref()
                .map(convert::cursor_out)
                .unwrap_or_default(),
            period_id: page.period,
        })
    }

    async fn around_owner(
        &self,
        ctx: Ctx,
        req: pb::AroundOwnerRequest,
    ) -> Result<pb::AroundOwnerResponse, Error> {
        let s = &self.settings;
        let (_, _, which, above, below) = validate::all((
            board_id(&req.leaderboard_id, "leaderboard_id"),
            s.owner(&req.owner_id, "owner_id"),
            which(&req.period_id, "period_id"),
            s.side(req.above, "above"),
            s.side(req.below, "below"),
        ))?;
        let page = ctx
            .store(self.store.around(
                &ctx.tenant,
                &req.leaderboard_id,
                which,
                &req.owner_id,
                above,
                below,
            ))
            .await?
            .ok_or_else(|| no_board(&req.leaderboard_id))?;
        Ok(pb::AroundOwnerResponse {
            found: !page.records.is_empty(),
            records: page.records.iter().map(record).collect(),
            period_id: page.period,
        })
    }

    async fn records(
        &self,
        ctx: Ctx,
        req: pb::RecordsRequest,
    ) -> Result<pb::RecordsResponse, Error> {
        let (_, _, which) = validate::all((
            board_id(&req.leaderboard_id, "leaderboard_id"),
            self.settings.owners(&req.owner_ids, "owner_ids"),
            which(&req.period_id, "period_id"),
        ))?;
        let (found, _, period) = ctx
            .store(
                self.store
                    .records(&ctx.tenant, &req.leaderboard_id, which, &req.owner_ids),
            )
            .await?
            .ok_or_else(|| no_board(&req.leaderboard_id))?;
        Ok(pb::RecordsResponse {
            records: found.iter().flatten().map(record).collect(),
            period_id: period,
        })
    }

    async fn rank(&self, ctx: Ctx, req: pb::RankRequest) -> Result<pb::RankResponse, Error> {
        let which = self.target(&req.leaderboard_id, &req.owner_id, &req.period_id)?;
        let owners = std::slice::from_ref(&req.owner_id);
        let (mut found, count, period) = ctx
            .store(
                self.store
                    .records(&ctx.tenant, &req.leaderboard_id, which, owners),
            )
            .await?
            .ok_or_else(|| no_board(&req.leaderboard_id))?;
        let found = found.pop().flatten();
        Ok(pb::RankResponse {
            found: found.is_some(),
            record: found.as_ref().map(record),
            owners: count,
            period_id: period,
        })
    }

    async fn delete_record(
        &self,
        ctx: Ctx,
        req: pb::DeleteRecordRequest,
    ) -> Result<pb::DeleteRecordResponse, Error> {
        let which = self.target(&req.leaderboard_id, &req.owner_id, &req.period_id)?;
        ctx.audit_target(format!("{}/{}", req.leaderboard_id, req.owner_id));
        let deleted = ctx
            .store(
                self.store
                    .delete_record(&ctx.tenant, &req.leaderboard_id, which, &req.owner_id),
            )
            .await?
            .ok_or_else(|| no_board(&req.leaderboard_id))?;
        Ok(pb::DeleteRecordResponse { deleted })
    }

    async fn list_periods(
        &self,
        ctx: Ctx,
        req: pb::ListPeriodsRequest,
    ) -> Result<pb::ListPeriodsResponse, Error> {
        board_id(&req.leaderboard_id, "leaderboard_id")?;
        let periods = ctx
            .store(self.store.periods(&ctx.tenant, &req.leaderboard_id))
            .await?
            .ok_or_else(|| no_board(&req.leaderboard_id))?;
        Ok(pb::ListPeriodsResponse {
            periods: periods.iter().map(convert::period).collect(),
        })
    }
}

/// How long a cursor may be: an order key of the longest owner id.
fn max_cursor_bytes(settings: &Settings) -> usize {
    prefix_len(super::model::TieBreak::Earliest) + settings.max_owner_id_bytes
}
