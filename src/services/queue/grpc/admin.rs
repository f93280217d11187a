//! Dead letters, cancel, pause, stats and schedules.

use super::{Handler, message, parse};
use crate::error::Error;
use crate::grpc::Ctx;
use crate::grpc::convert::{duration_out, timestamp_ms_out};
use crate::proto::datalayer::queue::v1 as pb;
use crate::services::queue::schedule::{self, CronSpec, Definition, Template};
use crate::services::queue::store::StoredSchedule;
use crate::validate::{self, FieldViolation};

fn ids(s: &crate::services::queue::Settings, ids: &[String]) -> Result<(), validate::Invalid> {
    if ids.len() > s.max_page_size {
        return Err(FieldViolation::new(
            "message_ids",
            format!(
                "at most {} per call (queue.max_page_size), got {}",
                s.max_page_size,
                ids.len()
            ),
        )
        .into());
    }
    validate::each(ids, "message_ids", |id| parse::message_id(id, "")).map(|_| ())
}

fn schedule_out(
    id: String,
    def: &Definition,
    next_ms: u64,
    template: pb::MessageSpec,
) -> pb::Schedule {
    pb::Schedule {
        id,
        cron: def.cron.clone(),
        time_zone: def.time_zone.clone(),
        template: Some(template),
        next_run: Some(timestamp_ms_out(next_ms)),
    }
}

/// A stored template back as a `MessageSpec`.
fn template_out(t: &Template) -> pb::MessageSpec {
    let m = t.message("", 0);
    pb::MessageSpec {
        payload: m.payload,
        headers: m.headers.into_iter().collect(),
        dedup_window: Some(duration_out(t.dedup_window_ms * 1000)),
        delay: (t.delay_ms > 0).then(|| duration_out(t.delay_ms * 1000)),
        priority: t.priority,
        group_key: t.group.clone(),
        max_attempts: t.max_attempts,
        lease_duration: Some(duration_out(t.lease_ms * 1000)),
        ..Default::default()
    }
}

impl Handler {
    pub(super) async fn cancel(
        &self,
        ctx: Ctx,
        req: pb::CancelRequest,
    ) -> Result<pb::CancelResponse, Error> {
        validate::all((
            self.queue(&ctx, &req.queue),
            parse::message_id(&req.message_id, "message_id"),
        ))?;
        let cancelled = ctx
            .store(self.store.cancel(&ctx.tenant, &req.queue, &req.message_id))
            .await?;
        Ok(pb::CancelResponse { cancelled })
    }

    pub(super) async fn list_dead(
        &self,
        ctx: Ctx,
        req: pb::ListDeadRequest,
    ) -> Result<pb::ListDeadResponse, Error> {
        let cursor = if req.cursor.is_empty() {
            Ok(0)
        } else {
            req.cursor
                .parse::<u64>()
                .map_err(|_| FieldViolation::new("cursor", "is not a cursor ListDead returned"))
        };
        let (_, limit, cursor) = validate::all((
            self.queue(&ctx, &req.queue),
            self.settings.page_size(req.limit, "limit"),
            cursor,
        ))?;
        let mut dead = ctx
            .store(
                self.store
                    .list_dead(&ctx.tenant, &req.queue, cursor, limit + 1),
            )
            .await?;
        let more = dead.len() > limit;
        dead.truncate(limit);
        let next_cursor = if more {
            dead.last()
                .map(|d| d.cursor.to_string())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(pb::ListDeadResponse {
            messages: dead
                .into_iter()
                .map(|d| pb::DeadMessage {
                    message: Some(message(d.delivery)),
                    died_at: Some(timestamp_ms_out(d.died_ms)),
                    reason: d.reason,
                })
                .collect(),
            next_cursor,
        })
    }

    pub(super) async fn redrive_dead(
        &self,
        ctx: Ctx,
        req: pb::RedriveDeadRequest,
    ) -> Result<pb::RedriveDeadResponse, Error> {
        ctx.audit_target(crate::audit::target(&[&req.queue]));
        validate::all((
            self.queue(&ctx, &req.queue),
            ids(&self.settings, &req.message_ids),
        ))?;
        let redriven = ctx
            .store(self.store.redrive(
                &ctx.tenant,
                &req.queue,
                &req.message_ids,
                self.settings.max_page_size,
            ))
            .await?;
        self.waiters.notify(&ctx.tenant, &req.queue, redriven);
        Ok(pb::RedriveDeadResponse { redriven })
    }

    pub(super) async fn purge_dead(
        &self,
        ctx: Ctx,
        req: pb::PurgeDeadRequest,
    ) -> Result<pb::PurgeDeadResponse, Error> {
        ctx.audit_target(crate::audit::target(&[&req.queue]));
        validate::all((
            self.queue(&ctx, &req.queue),
            ids(&self.settings, &req.message_ids),
        ))?;
        let purged = ctx
            .store(self.store.purge(
                &ctx.tenant,
                &req.queue,
                &req.message_ids,
                self.settings.max_page_size,
            ))
            .await?;
        Ok(pb::PurgeDeadResponse { purged })
    }

    async fn set_paused(&self, ctx: &Ctx, queue: &str, paused: bool) -> Result<(), Error> {
        ctx.audit_target(crate::audit::target(&[queue]));
        self.queue(ctx, queue)?;
        ctx.store(self.store.set_paused(&ctx.tenant, queue, paused))
            .await?;
        if !paused {
            self.waiters.notify(&ctx.tenant, queue, u64::MAX);
        }
        Ok(())
    }

    pub(super) async fn pause(
        &self,
        ctx: Ctx,
        req: pb::PauseRequest,
    ) -> Result<pb::PauseResponse, Error> {
        self.set_paused(&ctx, &req.queue, true).await?;
        Ok(pb::PauseResponse {})
    }

    pub(super) async fn resume(
        &self,
        ctx: Ctx,
        req: pb::ResumeRequest,
    ) -> Result<pb::ResumeResponse, Error> {
        self.set_paused(&ctx, &req.queue, false).await?;
        Ok(pb::ResumeResponse {})
    }

    pub(super) async fn stats(
        &self,
        ctx: Ctx,
        req: pb::StatsRequest,
    ) -> Result<pb::StatsResponse, Error> {
        self.queue(&ctx, &req.queue)?;
        let s = ctx.store(self.store.stats(&ctx.tenant, &req.queue)).await?;
        Ok(pb::StatsResponse {
            waiting: s.waiting,
            delayed: s.delayed,
            leased: s.leased,
            dead: s.dead,
            oldest_waiting_age: s.oldest_waiting_ms.map(|ms| duration_out(ms * 1000)),
            paused: s.paused,
            enqueued_total: s.enqueued_total,
            acked_total: s.acked_total,
            retried_total: s.retried_total,
            dead_total: s.dead_total,
            expired_total: s.expired_total,
            enqueue_rate: s.enqueue_rate,
            ack_rate: s.ack_rate,
        })
    }

    pub(super) async fn upsert_schedule(
        &self,
        ctx: Ctx,
        req: pb::UpsertScheduleRequest,
    ) -> Result<pb::UpsertScheduleResponse, Error> {
        let Some(s) = req.schedule else {
            return Err(Error::invalid("schedule", "is required"));
        };
        let spec = CronSpec::parse(&s.cron, &s.time_zone).map_err(|problems| {
            validate::Invalid(
                problems
                    .into_iter()
                    .map(|(field, why)| FieldViolation::new(format!("schedule.{field}"), why))
                    .collect(),
            )
        });
        let template = match s.template.clone() {
            Some(t) => {
                parse::message(&self.settings, t, 0, true).map_err(|e| e.under("schedule.template"))
            }
            None => Err(validate::Invalid::one("schedule.template", "is required")),
        };
        let (_, _, spec, template) = validate::all((
            self.queue(&ctx, &req.queue),
            validate::name(&s.id, "schedule.id"),
            spec,
            template,
        ))?;
        if !template.dedup_id.is_empty() {
            return Err(Error::invalid(
                "schedule.template.dedup_id",
                "each tick's message is deduplicated by the schedule; leave it empty",
            ));
        }
        let now = ctx.store(self.store.now_ms()).await?;
        let Some(next_ms) = spec.next_after(now) else {
            return Err(Error::invalid("schedule.cron", "never fires after now"));
        };
        let def = Definition {
            cron: s.cron.clone(),
            time_zone: s.time_zone.clone(),
            template: Template::of(&template),
        };
        let definition = serde_json::to_string(&def)
            .map_err(|e| Error::Internal(format!("a schedule does not serialize: {e}")))?;
        let stored = StoredSchedule {
            id: s.id.clone(),
            definition,
            next_ms,
        };
        let put = self.store.put_schedule(
            &ctx.tenant,
            &req.queue,
            &stored,
            self.settings.max_schedules,
        );
        if !ctx.store(put).await? {
            return Err(Error::ResourceExhausted(format!(
                "queue {} has queue.max_schedules ({}) schedules; delete one first",
                req.queue, self.settings.max_schedules
            )));
        }
        let template = template_out(&def.template);
        Ok(pb::UpsertScheduleResponse {
            schedule: Some(schedule_out(s.id, &def, next_ms, template)),
        })
    }

    pub(super) async fn delete_schedule(
        &self,
        ctx: Ctx,
        req: pb::DeleteScheduleRequest,
    ) -> Result<pb::DeleteScheduleResponse, Error> {
        validate::all((self.queue(&ctx, &req.queue), validate::name(&req.id, "id")))?;
        let deleted = ctx
            .store(self.store.delete_schedule(&ctx.tenant, &req.queue, &req.id))
            .await?;
        Ok(pb::DeleteScheduleResponse { deleted })
    }

    pub(super) async fn list_schedules(
        &self,
        ctx: Ctx,
        req: pb::ListSchedulesRequest,
    ) -> Result<pb::ListSchedulesResponse, Error> {
        self.queue(&ctx, &req.queue)?;
        let stored = ctx
            .store(self.store.schedules(&ctx.tenant, &req.queue))
            .await?;
        let schedules = stored
            .into_iter()
            .filter_map(|s| {
                let (def, _) = schedule::decode(&s)?;
                let template = template_out(&def.template);
                Some(schedule_out(s.id, &def, s.next_ms, template))
            })
            .collect();
        Ok(pb::ListSchedulesResponse { schedules })
    }
}
