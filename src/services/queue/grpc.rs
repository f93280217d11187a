//! `datalayer.queue.v1.QueueService`: the wire ↔ the domain, then the
//! store. Enqueue, lease, ack, nack and extend are here; the `Consume`
//! stream in `grpc/consume.rs`; dead letters, pause, stats and schedules
//! in `grpc/admin.rs`; message validation in `grpc/parse.rs`.

mod admin;
mod consume;
mod parse;
mod push;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::push::store::Destinations;
use super::schedule::Ticker;
use super::store::{Limits, Store};
use super::waiters::Waiters;
use super::{Delivery, Enqueued, LeaseCheck, Leased, Settings};
use crate::error::Error;
use crate::grpc::Ctx;
use crate::grpc::convert::{duration_in, timestamp_ms_out};
use crate::keys::Tenant;
use crate::proto::datalayer::queue::v1 as pb;
use crate::validate::{self, FieldViolation};

/// Cheap to clone: a `Consume` stream holds its own.
#[derive(Clone)]
pub struct Handler {
    store: Arc<dyn Store>,
    settings: Settings,
    waiters: Arc<Waiters>,
    ticker: Arc<Ticker>,
    destinations: Arc<dyn Destinations>,
}

crate::grpc_service! {
    pb::queue_service_server::{QueueService, QueueServiceServer} for Handler {
        unary Enqueue => enqueue(pb::EnqueueRequest) -> pb::EnqueueResponse;
        unary EnqueueBatch => enqueue_batch(pb::EnqueueBatchRequest) -> pb::EnqueueBatchResponse;
        unary Lease => lease(pb::LeaseRequest) -> pb::LeaseResponse;
        unary Ack => ack(pb::AckRequest) -> pb::AckResponse;
        unary Nack => nack(pb::NackRequest) -> pb::NackResponse;
        unary ExtendLease => extend_lease(pb::ExtendLeaseRequest) -> pb::ExtendLeaseResponse;
        unary Cancel => cancel(pb::CancelRequest) -> pb::CancelResponse;
        unary ListDead => list_dead(pb::ListDeadRequest) -> pb::ListDeadResponse;
        unary RedriveDead => redrive_dead(pb::RedriveDeadRequest) -> pb::RedriveDeadResponse;
        unary PurgeDead => purge_dead(pb::PurgeDeadRequest) -> pb::PurgeDeadResponse;
        unary Pause => pause(pb::PauseRequest) -> pb::PauseResponse;
        unary Resume => resume(pb::ResumeRequest) -> pb::ResumeResponse;
        unary Stats => stats(pb::StatsRequest) -> pb::StatsResponse;
        unary UpsertSchedule => upsert_schedule(pb::UpsertScheduleRequest) -> pb::UpsertScheduleResponse;
        unary DeleteSchedule => delete_schedule(pb::DeleteScheduleRequest) -> pb::DeleteScheduleResponse;
        unary ListSchedules => list_schedules(pb::ListSchedulesRequest) -> pb::ListSchedulesResponse;
        unary SetDestination => set_destination(pb::SetDestinationRequest) -> pb::SetDestinationResponse;
        unary GetDestination => get_destination(pb::GetDestinationRequest) -> pb::GetDestinationResponse;
        stream Consume => consume(tonic::Streaming<pb::ConsumeRequest>) -> pb::ConsumeResponse as ConsumeStream;
    }
}

/// A waiting call answers this long before its deadline, so the caller
/// gets "nothing yet" rather than DEADLINE_EXCEEDED.
const ANSWER_MARGIN: Duration = Duration::from_millis(20);

/// The wall clock in ms (bounds of `not_before`; the store's clock decides
/// when a message is due).
fn now_ms() -> u64 {
    crate::audit::now_us() / 1000
}

fn count(event: &'static str, n: u64) {
    if n > 0 {
        metrics::counter!(crate::metrics::QUEUE_MESSAGES, "event" => event).increment(n);
    }
}

pub(super) fn message(d: Delivery) -> pb::Message {
    pb::Message {
        message_id: d.id,
        payload: d.payload,
        headers: d.headers.into_iter().collect(),
        attempt: d.attempt,
        max_attempts: d.max_attempts,
        lease_token: d.token,
        lease_expires_at: (d.lease_expires_ms > 0).then(|| timestamp_ms_out(d.lease_expires_ms)),
        enqueued_at: Some(timestamp_ms_out(d.enqueued_ms)),
        priority: d.priority,
        group_key: d.group,
    }
}

fn lease_lost(queue: &str, id: &str) -> Error {
    Error::FailedPrecondition(format!(
        "lease lost: message {} of queue {queue} was delivered again, went to the dead letters or is gone; do not act on it",
        validate::quote(id)
    ))
}

/// A message id and lease token as sent back.
fn lease_ref(id: &str, token: &str) -> Result<((), ()), validate::Invalid> {
    let id_ok = parse::message_id(id, "message_id");
    let token_ok = if !token.is_empty() && token.len() <= 64 && !token.contains(char::is_control) {
        Ok(())
    } else {
        Err(FieldViolation::new(
            "lease_token",
            "must be the lease_token of the delivery (from Lease or Consume)",
        ))
    };
    validate::all((id_ok, token_ok))
}

impl Handler {
    pub fn new(
        store: Arc<dyn Store>,
        settings: Settings,
        waiters: Arc<Waiters>,
        ticker: Arc<Ticker>,
        destinations: Arc<dyn Destinations>,
    ) -> Self {
        Self {
            store,
            settings,
            waiters,
            ticker,
            destinations,
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            max_messages: self.settings.max_messages,
            done_retention_ms: self.settings.done_retention.as_millis() as u64,
        }
    }

    fn queue(&self, ctx: &Ctx, queue: &str) -> Result<(), FieldViolation> {
        validate::name(queue, "queue")?;
        self.ticker.know(&ctx.tenant);
        Ok(())
    }

    async fn put(
        &self,
        ctx: &Ctx,
        queue: &str,
        messages: Vec<super::NewMessage>,
        allow_partial: bool,
    ) -> Result<Vec<pb::EnqueueResponse>, Error> {
        let results = ctx
            .store(
                self.store
                    .enqueue(&ctx.tenant, queue, &messages, self.limits()),
            )
            .await?;
        let mut out = Vec::with_capacity(results.len());
        for result in results {
            let (event, id, deduplicated, queue_full) = match result {
                Enqueued::New(id) => ("enqueued", id, false, false),
                Enqueued::Duplicate(id) => ("deduplicated", id, true, false),
                Enqueued::Full if allow_partial => ("queue_full", String::new(), false, true),
                Enqueued::Full => {
                    // Earlier messages of the batch are in: say how many.
                    return Err(Error::ResourceExhausted(format!(
                        "queue {queue} holds queue.max_messages ({}) messages; {} of this call's messages were enqueued before it filled",
                        self.settings.max_messages,
                        out.len()
                    )));
                }
            };
            count(event, 1);
            out.push(pb::EnqueueResponse {
                message_id: id,
                deduplicated,
                queue_full,
            });
        }
        let new = out
            .iter()
            .filter(|r| !r.deduplicated && !r.queue_full)
            .count();
        self.waiters.notify(&ctx.tenant, queue, new as u64);
        Ok(out)
    }

    async fn enqueue(
        &self,
        ctx: Ctx,
        req: pb::EnqueueRequest,
    ) -> Result<pb::EnqueueResponse, Error> {
        let message = match req.message {
            Some(spec) => parse::message(&self.settings, spec, now_ms(), false)
                .map_err(|e| e.under("message")),
            None => Err(validate::Invalid::one("message", "is required")),
        };
        let (_, message) = validate::all((self.queue(&ctx, &req.queue), message))?;
        let mut out = self.put(&ctx, &req.queue, vec![message], false).await?;
        out.pop()
            .ok_or_else(|| Error::Internal("the store answered no enqueue".to_owned()))
    }

    async fn enqueue_batch(
        &self,
        ctx: Ctx,
        req: pb::EnqueueBatchRequest,
    ) -> Result<pb::EnqueueBatchResponse, Error> {
        let now = now_ms();
        let (_, _, messages) = validate::all((
            self.queue(&ctx, &req.queue),
            self.settings.batch(req.messages.len(), "messages"),
            validate::each(req.messages, "messages", |m| {
                parse::message(&self.settings, m, now, false)
            }),
        ))?;
        let results = self
            .put(&ctx, &req.queue, messages, req.allow_partial)
            .await?;
        Ok(pb::EnqueueBatchResponse { results })
    }

    /// Leases up to `max`, waiting until `give_up` for one to be ready.
    pub(super) async fn lease_waiting(
        &self,
        ctx: &Ctx,
        tenant: &Tenant,
        queue: &str,
        max: usize,
        lease_ms: Option<u64>,
        give_up: Instant,
    ) -> Result<Vec<Delivery>, Error> {
        loop {
            let notify = self.waiters.subscribe(tenant, queue);
            // Registered before the look, so a message enqueued after the
            // look but before the wait still wakes this waiter.
            let woken = notify.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let seeds = super::token_seeds(max)
                .map_err(|e| Error::Internal(format!("no randomness for lease tokens: {e}")))?;
            let random = getrandom::u64().unwrap_or(0) as f64 / u64::MAX as f64;
            let leased: Leased = ctx
                .store(self.store.lease(
                    tenant,
                    queue,
                    max,
                    lease_ms,
                    &seeds,
                    random.min(0.999_999),
                ))
                .await?;
            let now = Instant::now();
            if !leased.deliveries.is_empty() || now >= give_up {
                count("delivered", leased.deliveries.len() as u64);
                return Ok(leased.deliveries);
            }
            let mut nap = self.waiters.poll_interval.min(give_up - now);
            if let Some(due) = leased.next_due_ms {
                let wall = crate::audit::now_us() / 1000;
                nap = nap.min(Duration::from_millis(due.saturating_sub(wall).max(1)));
            }
            tokio::select! {
                () = woken => {}
                () = tokio::time::sleep(nap) => {}
            }
        }
    }

    async fn lease(&self, ctx: Ctx, req: pb::LeaseRequest) -> Result<pb::LeaseResponse, Error> {
        let s = &self.settings;
        let max = match req.max_messages as usize {
            0 => Ok(1),
            n if n > s.max_lease_batch => Err(FieldViolation::new(
                "max_messages",
                format!(
                    "must be at most {} (queue.max_lease_batch), got {n}",
                    s.max_lease_batch
                ),
            )),
            n => Ok(n),
        };
        let lease = duration_in(req.lease_duration.as_ref(), "lease_duration").and_then(|d| {
            d.map(|d| s.lease_ms(Some(d), None, "lease_duration"))
                .transpose()
        });
        let wait = duration_in(req.wait.as_ref(), "wait").and_then(|w| {
            let w = w.unwrap_or_default();
            if w > s.max_wait {
                Err(FieldViolation::new(
                    "wait",
                    format!(
                        "must be at most {} (queue.max_wait), got {}",
                        validate::duration(s.max_wait),
                        validate::duration(w)
                    ),
                ))
            } else {
                Ok(w)
            }
        });
        let (_, max, lease_ms, wait) =
            validate::all((self.queue(&ctx, &req.queue), max, lease, wait))?;
        let started = Instant::now();
        let answer_by = ctx.deadline().checked_sub(ANSWER_MARGIN).unwrap_or(started);
        let give_up = (started + wait).min(answer_by);
        let tenant = ctx.tenant.clone();
        let deliveries = self
            .lease_waiting(&ctx, &tenant, &req.queue, max, lease_ms, give_up)
            .await?;
        Ok(pb::LeaseResponse {
            messages: deliveries.into_iter().map(message).collect(),
        })
    }

    async fn ack(&self, ctx: Ctx, req: pb::AckRequest) -> Result<pb::AckResponse, Error> {
        validate::all((
            self.queue(&ctx, &req.queue),
            lease_ref(&req.message_id, &req.lease_token),
        ))?;
        let answer = ctx
            .store(self.store.ack(
                &ctx.tenant,
                &req.queue,
                &req.message_id,
                &req.lease_token,
                self.limits(),
            ))
            .await?;
        match answer {
            LeaseCheck::Done(()) => {
                count("acked", 1);
                Ok(pb::AckResponse {})
            }
            LeaseCheck::Lost => {
                count("lease_lost", 1);
                Err(lease_lost(&req.queue, &req.message_id))
            }
        }
    }

    async fn nack(&self, ctx: Ctx, req: pb::NackRequest) -> Result<pb::NackResponse, Error> {
        let after = duration_in(req.retry_after.as_ref(), "retry_after").and_then(|d| {
            d.map(|d| {
                if d > self.settings.max_delay {
                    Err(FieldViolation::new(
                        "retry_after",
                        format!(
                            "must be at most {} (queue.max_delay)",
                            validate::duration(self.settings.max_delay)
                        ),
                    ))
                } else {
                    Ok(d.as_millis() as u64)
                }
            })
            .transpose()
        });
        let reason = validate::text(&req.reason, "reason", 0, 1024);
        let (_, _, after, _) = validate::all((
            self.queue(&ctx, &req.queue),
            lease_ref(&req.message_id, &req.lease_token),
            after,
            reason,
        ))?;
        let random = getrandom::u64().unwrap_or(0) as f64 / u64::MAX as f64;
        let answer = ctx
            .store(self.store.nack(
                &ctx.tenant,
                &req.queue,
                &req.message_id,
                &req.lease_token,
                after,
                req.dead_letter,
                &req.reason,
                random.min(0.999_999),
            ))
            .await?;
        match answer {
            LeaseCheck::Done(dead) => {
                count("nacked", 1);
                Ok(pb::NackResponse { dead })
            }
            LeaseCheck::Lost => {
                count("lease_lost", 1);
                Err(lease_lost(&req.queue, &req.message_id))
            }
        }
    }

    async fn extend_lease(
        &self,
        ctx: Ctx,
        req: pb::ExtendLeaseRequest,
    ) -> Result<pb::ExtendLeaseResponse, Error> {
        let lease = duration_in(req.lease_duration.as_ref(), "lease_duration")
            .and_then(|d| self.settings.lease_ms(d, None, "lease_duration"));
        let (_, _, lease_ms) = validate::all((
            self.queue(&ctx, &req.queue),
            lease_ref(&req.message_id, &req.lease_token),
            lease,
        ))?;
        let answer = ctx
            .store(self.store.extend(
                &ctx.tenant,
                &req.queue,
                &req.message_id,
                &req.lease_token,
                lease_ms,
            ))
            .await?;
        match answer {
            LeaseCheck::Done(until) => Ok(pb::ExtendLeaseResponse {
                lease_expires_at: Some(timestamp_ms_out(until)),
            }),
            LeaseCheck::Lost => Err(lease_lost(&req.queue, &req.message_id)),
        }
    }
}
