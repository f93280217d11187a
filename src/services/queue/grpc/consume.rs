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
//! together are pipelined to Redis in one round trip by the store's lanes.

use futures::stream::{FuturesUnordered, StreamExt};
use futures::{FutureExt, Stream, future::BoxFuture};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use super::{Handler, message};
use crate::error::Error;
use crate::grpc::Ctx;
use crate::grpc::convert::duration_in;
use crate::keys::Tenant;
use crate::proto::datalayer::queue::v1 as pb;
use crate::services::queue::Delivery;
use crate::validate::{self, FieldViolation};

/// Most credits a consumer may hold at once.
const MAX_CREDITS: u64 = 10_000;
/// How long one lease attempt of a stream waits before it looks again.
const WAIT_SLICE: std::time::Duration = std::time::Duration::from_millis(500);
/// Most acks of one stream in flight at once; the stream's side is read
/// again when one finishes.
const MAX_ACKS_IN_FLIGHT: usize = 1000;

type Answer = Result<pb::ConsumeResponse, Error>;

struct Consumer {
    handler: Handler,
    ctx: Ctx,
    tenant: Tenant,
    queue: String,
    lease_ms: Option<u64>,
    credits: u64,
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
    Ack(pb::consume_request::Settle),
    Done,
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
        Ok(None) | Err(_) => Ok(Said::Done),
    }
}

impl Consumer {
    /// An ack, answered as the unary Ack would be.
    fn ack(&self, settle: pb::consume_request::Settle) -> BoxFuture<'static, pb::ConsumeResponse> {
        let handler = self.handler.clone();
        let ctx = self.ctx.renewed(self.ctx.store_timeout() * 2);
        let request = pb::AckRequest {
            queue: self.queue.clone(),
            message_id: settle.message_id.clone(),
            lease_token: settle.lease_token,
        };
        async move {
            let acked = match handler.ack(ctx, request).await {
                Ok(_) => pb::consume_response::Acked {
                    message_id: settle.message_id,
                    ok: true,
                    code: 0,
                    error: String::new(),
                },
                Err(e) => pb::consume_response::Acked {
                    message_id: settle.message_id,
                    ok: false,
                    code: crate::grpc::status::code_of(&e) as i32,
                    error: crate::grpc::status::bounded(&e.to_string(), 256),
                },
            };
            pb::ConsumeResponse {
                message: None,
                acked: Some(acked),
            }
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
                got = inbound.message(), if !inbound_done && acking.len() < MAX_ACKS_IN_FLIGHT => {
                    match said(got) {
                        Ok(Said::Credit(n)) => match credit(n, self.credits) {
                            Ok(total) => self.credits = total,
                            Err(e) => {
                                let _ = tx.send(Err(e)).await;
                                return;
                            }
                        },
                        Ok(Said::Ack(settle)) => {
                            // The consumer is done with it: its credit is back.
                            self.credits = (self.credits + 1).min(MAX_CREDITS);
                            acking.push(self.ack(settle));
                        }
                        Ok(Said::Done) => inbound_done = true,
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    }
                }
                Some(answer) = acking.next(), if !acking.is_empty() => {
                    if tx.send(Ok(answer)).await.is_err() {
                        return;
                    }
                }
                leased = async { leasing.as_mut().expect("checked").await }, if leasing.is_some() => {
                    leasing = None;
                    match leased {
                        Ok(deliveries) => {
                            self.credits -= (deliveries.len() as u64).min(self.credits);
                            for d in deliveries {
                                let answer = pb::ConsumeResponse {
                                    message: Some(message(d)),
                                    acked: None,
                                };
                                if tx.send(Ok(answer)).await.is_err() {
                                    return;
                                }
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
        };
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(consumer.run(inbound, tx));
        Ok(ReceiverStream::new(rx))
    }
}
