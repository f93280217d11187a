//! `Consume`: a bidirectional stream. The consumer opens it with `Start`
//! (queue, credits), grants more credits as it finishes work, and may ack
//! on the stream itself (`ack`, which also gives a credit back). The server
//! sends a message only against a credit, so a consumer is never sent more
//! than it can take. Messages sent are leased as by `Lease`: a message whose
//! consumer vanishes is redelivered when its lease runs out.
//!
//! One task drives a stream: it reads the consumer's side, runs one lease
//! at a time while credits are held, and applies acks as they arrive,
//! concurrently with the lease (so an ack never waits for a long-poll), each
//! answered on the stream as soon as it is applied. Acks that arrive
//! together are applied together: one script call for all of them.

use futures::stream::{FuturesUnordered, StreamExt};
use futures::{FutureExt, Stream, future::BoxFuture};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use super::{Handler, count, lease_lost, lease_ref, message};
use crate::error::Error;
use crate::grpc::Ctx;
use crate::grpc::convert::duration_in;
use crate::keys::Tenant;
use crate::proto::datalayer::queue::v1 as pb;
use crate::services::queue::{Delivery, LeaseCheck};
use crate::validate::{self, FieldViolation};
use pb::consume_request::Settle;

/// Most credits a consumer may hold at once.
const MAX_CREDITS: u64 = 10_000;
/// How long one lease attempt of a stream waits before it looks again.
const WAIT_SLICE: std::time::Duration = std::time::Duration::from_millis(500);
/// Most acks applied in one store call.
const MAX_ACK_BATCH: usize = 128;
/// Most ack batches of one stream in flight at once; the stream's side is
/// read again when one finishes.
const MAX_ACK_BATCHES_IN_FLIGHT: usize = 64;

type Answer = Result<pb::ConsumeResponse, Error>;

struct Consumer {
    handler: Handler,
    ctx: Ctx,
    tenant: Tenant,
    queue: String,
    lease_ms: Option<u64>,
    credits: u64,
    /// The consumer's stream is gone: nothing more can reach it.
    gone: bool,
}

fn credit(n: u32, held: u64) -> Result<u64, Error> {
    let total = held + u64::from(n);
    if total > MAX_CREDITS {
        return Err(FieldViolation::new(
            "credit",
            format!("a consumer holds at most {MAX_CREDITS} credits, this would make {total}"),
        )
        .into());
    }
    Ok(total)
}

/// What the consumer's side said.
enum Said {
    Credit(u32),
    Ack(Settle),
    /// Its side is closed: it sends nothing more, but still reads.
    Done,
    /// Its stream is gone (cancelled, reset, broken).
    Gone,
}

fn said(got: Result<Option<pb::ConsumeRequest>, tonic::Status>) -> Result<Said, Error> {
    use pb::consume_request::Kind;
    match got {
        Ok(Some(pb::ConsumeRequest {
            kind: Some(Kind::Credit(n)),
        })) => Ok(Said::Credit(n)),
        Ok(Some(pb::ConsumeRequest {
            kind: Some(Kind::Ack(settle)),
        })) => Ok(Said::Ack(settle)),
        Ok(Some(_)) => Err(Error::invalid(
            "kind",
            "after Start, a consumer sends only credit and ack messages",
        )),
        Ok(None) => Ok(Said::Done),
        Err(_) => Ok(Said::Gone),
    }
}

/// The stream's answer to one ack: done, or why not.
fn acked(message_id: String, failure: Option<&Error>) -> pb::ConsumeResponse {
    let acked = match failure {
        None => pb::consume_response::Acked {
            message_id,
            ok: true,
            code: 0,
            error: String::new(),
        },
        Some(e) => pb::consume_response::Acked {
            message_id,
            ok: false,
            code: crate::grpc::status::code_of(e) as i32,
            error: crate::grpc::status::bounded(&e.to_string(), 256),
        },
    };
    pb::ConsumeResponse {
        message: None,
        acked: Some(acked),
    }
}

impl Consumer {
    /// Takes in what the consumer said; answers whether its side is done.
    fn heard(&mut self, said: Said, settles: &mut Vec<Settle>) -> Result<bool, Error> {
        match said {
            Said::Credit(n) => self.credits = credit(n, self.credits)?,
            Said::Ack(settle) => {
                // The consumer is done with it: its credit is back.
                self.credits = (self.credits + 1).min(MAX_CREDITS);
                settles.push(settle);
            }
            Said::Done => return Ok(true),
            Said::Gone => {
                self.gone = true;
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Acks that arrived together, applied in one store call and each
    /// answered as the unary Ack would be.
    fn acks(&self, settles: Vec<Settle>) -> BoxFuture<'static, Vec<pb::ConsumeResponse>> {
        let handler = self.handler.clone();
        let ctx = self.ctx.renewed(self.ctx.store_timeout() * 2);
        let (tenant, queue) = (self.tenant.clone(), self.queue.clone());
        async move {
            // Each ack's lease reference is checked on its own; the valid
            // ones go to the store in one call.
            let checked: Vec<Result<(), Error>> = settles
                .iter()
                .map(|s| {
                    lease_ref(&s.message_id, &s.lease_token)
                        .map(|_| ())
                        .map_err(Error::from)
                })
                .collect();
            let valid: Vec<(String, String)> = settles
                .iter()
                .zip(&checked)
                .filter(|(_, checked)| checked.is_ok())
                .map(|(s, _)| (s.message_id.clone(), s.lease_token.clone()))
                .collect();
            let mut stored = if valid.is_empty() {
                Ok(Vec::new().into_iter())
            } else {
                ctx.store(
                    handler
                        .store
                        .ack_many(&tenant, &queue, &valid, handler.limits()),
                )
                .await
                .map(Vec::into_iter)
            };
            let mut answers = Vec::with_capacity(settles.len());
            for (s, checked) in settles.into_iter().zip(checked) {
                answers.push(match (checked, &mut stored) {
                    (Err(e), _) => acked(s.message_id, Some(&e)),
                    (Ok(()), Err(e)) => acked(s.message_id, Some(e)),
                    (Ok(()), Ok(stored)) => {
                        if let Some(LeaseCheck::Done(())) = stored.next() {
                            count("acked", 1);
                            acked(s.message_id, None)
                        } else {
                            count("lease_lost", 1);
                            let lost = lease_lost(&queue, &s.message_id);
                            acked(s.message_id, Some(&lost))
                        }
                    }
                });
            }
            answers
        }
        .boxed()
    }

    /// A lease of up to `want` messages, waiting up to one slice. It owns
    /// what it needs and is never dropped half-way: a lease script already
    /// sent has leased its messages, and they must reach the consumer.
    fn lease(&self, want: usize) -> BoxFuture<'static, Result<Vec<Delivery>, Error>> {
        let give_up = Instant::now() + WAIT_SLICE;
        let ctx = self.ctx.renewed(WAIT_SLICE + self.ctx.store_timeout() * 2);
        let (handler, tenant, queue, lease_ms) = (
            self.handler.clone(),
            self.tenant.clone(),
            self.queue.clone(),
            self.lease_ms,
        );
        async move {
            handler
                .lease_waiting(&ctx, &tenant, &queue, want, lease_ms, give_up)
                .await
        }
        .boxed()
    }

    /// Sends what a lease found. What cannot reach the consumer any more
    /// (its stream is gone) is given back at once rather than left leased
    /// until the lease runs out. A consumer that only closed its side still
    /// gets what was leased for it. Answers whether the stream is gone.
    async fn send(&mut self, deliveries: Vec<Delivery>, tx: &mpsc::Sender<Answer>) -> bool {
        let mut undelivered = Vec::new();
        for d in deliveries {
            if self.gone {
                undelivered.push((d.id, d.token));
                continue;
            }
            let lease = (d.id.clone(), d.token.clone());
            let answer = pb::ConsumeResponse {
                message: Some(message(d)),
                acked: None,
            };
            if tx.send(Ok(answer)).await.is_err() {
                self.gone = true;
                undelivered.push(lease);
            }
        }
        if !undelivered.is_empty() {
            self.handler
                .give_back(&self.ctx, &self.tenant, &self.queue, &undelivered)
                .await;
        }
        self.gone
    }

    /// Drives the stream until the consumer is done (its side closed, no
    /// lease or ack left) or the answers have nowhere to go.
    async fn run(
        mut self,
        mut inbound: tonic::Streaming<pb::ConsumeRequest>,
        tx: mpsc::Sender<Answer>,
    ) {
        let mut inbound_done = false;
        let mut leasing: Option<BoxFuture<'static, Result<Vec<Delivery>, Error>>> = None;
        let mut acking = FuturesUnordered::new();
        loop {
            if leasing.is_none() && self.credits > 0 && !inbound_done {
                let want = (self.credits as usize).min(self.handler.settings.max_lease_batch);
                leasing = Some(self.lease(want));
            }
            if inbound_done && leasing.is_none() && acking.is_empty() {
                return;
            }
            tokio::select! {
                got = inbound.message(), if !inbound_done && acking.len() < MAX_ACK_BATCHES_IN_FLIGHT => {
                    // What else has arrived is taken in too, so the acks
                    // that came together go to the store together.
                    let mut settles = Vec::new();
                    let mut next = Some(got);
                    while let Some(got) = next.take() {
                        match said(got).and_then(|said| self.heard(said, &mut settles)) {
                            Ok(done) => inbound_done = done,
                            Err(e) => {
                                let _ = tx.send(Err(e)).await;
                                return;
                            }
                        }
                        if !inbound_done && settles.len() < MAX_ACK_BATCH {
                            next = inbound.message().now_or_never();
                        }
                    }
                    if !settles.is_empty() {
                        acking.push(self.acks(settles));
                    }
                }
                Some(answers) = acking.next(), if !acking.is_empty() => {
                    for answer in answers {
                        if tx.send(Ok(answer)).await.is_err() {
                            return;
                        }
                    }
                }
                leased = async { leasing.as_mut().expect("checked").await }, if leasing.is_some() => {
                    leasing = None;
                    match leased {
                        Ok(deliveries) => {
                            self.credits -= (deliveries.len() as u64).min(self.credits);
                            if self.send(deliveries, &tx).await {
                                return;
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    }
                }
            }
        }
    }
}

impl Handler {
    pub(super) async fn consume(
        &self,
        ctx: Ctx,
        mut inbound: tonic::Streaming<pb::ConsumeRequest>,
    ) -> Result<impl Stream<Item = Answer> + Send + 'static, Error> {
        let first = inbound.message().await.map_err(|e| {
            Error::invalid(
                "start",
                format!("the stream broke before Start: {}", e.message()),
            )
        })?;
        let Some(pb::ConsumeRequest {
            kind: Some(pb::consume_request::Kind::Start(start)),
        }) = first
        else {
            return Err(Error::invalid(
                "start",
                "a Consume stream begins with Start",
            ));
        };
        let lease =
            duration_in(start.lease_duration.as_ref(), "start.lease_duration").and_then(|d| {
                d.map(|d| {
                    self.settings
                        .lease_ms(Some(d), None, "start.lease_duration")
                })
                .transpose()
            });
        let credits = credit(start.credits, 0);
        let (_, lease_ms) = validate::all((
            self.queue(&ctx, &start.queue).map_err(|v| v.under("start")),
            lease,
        ))?;
        let credits = credits?;
        let consumer = Consumer {
            handler: self.clone(),
            tenant: ctx.tenant.clone(),
            ctx,
            queue: start.queue,
            lease_ms,
            credits,
            gone: false,
        };
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(consumer.run(inbound, tx));
        Ok(ReceiverStream::new(rx))
    }
}

impl Handler {
    /// Deliveries leased for a consumer that is gone, made ready again
    /// (see `Store::give_back`); on failure they return when their lease
    /// runs out, as after a crash.
    pub(super) async fn give_back(
        &self,
        ctx: &Ctx,
        tenant: &Tenant,
        queue: &str,
        given: &[(String, String)],
    ) {
        let ctx = ctx.renewed(ctx.store_timeout() * 2);
        match ctx.store(self.store.give_back(tenant, queue, given)).await {
            Ok(n) => {
                count("given_back", n);
                self.waiters.notify(tenant, queue, n);
            }
            Err(e) => tracing::warn!(
                error = %e,
                queue,
                messages = given.len(),
                "undelivered messages not given back; they return when their lease runs out"
            ),
        }
    }
}
