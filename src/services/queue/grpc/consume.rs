//! `Consume`: a bidirectional stream. The consumer opens it with `Start`
//! (queue, credits) and grants more credits as it finishes work; the
//! server sends a message only against a credit, so a consumer is never
//! sent more than it can take. Messages sent are leased as by `Lease`: the
//! consumer acks each with `Ack` (a message whose consumer vanishes is
//! redelivered when its lease runs out).

use std::collections::VecDeque;

use futures::Stream;
use tokio::time::Instant;

use super::{Handler, message};
use crate::error::Error;
use crate::grpc::Ctx;
use crate::grpc::convert::duration_in;
use crate::keys::Tenant;
use crate::proto::datalayer::queue::v1 as pb;
use crate::validate::{self, FieldViolation};

/// Most credits a consumer may hold at once.
const MAX_CREDITS: u64 = 10_000;
/// How long one lease attempt of a stream waits before it looks at the
/// consumer's side again.
const WAIT_SLICE: std::time::Duration = std::time::Duration::from_millis(500);

struct Consumer {
    handler: Handler,
    ctx: Ctx,
    tenant: Tenant,
    queue: String,
    lease_ms: Option<u64>,
    inbound: tonic::Streaming<pb::ConsumeRequest>,
    credits: u64,
    inbound_done: bool,
    pending: VecDeque<pb::Message>,
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

impl Consumer {
    /// A message from the consumer: more credits, or the end of its side.
    fn take(
        &mut self,
        got: Result<Option<pb::ConsumeRequest>, tonic::Status>,
    ) -> Result<(), Error> {
        match got {
            Ok(Some(pb::ConsumeRequest {
                kind: Some(pb::consume_request::Kind::Credit(n)),
            })) => {
                self.credits = credit(n, self.credits)?;
                Ok(())
            }
            Ok(Some(_)) => Err(Error::invalid(
                "kind",
                "after Start, a consumer sends only credit messages",
            )),
            Ok(None) | Err(_) => {
                self.inbound_done = true;
                Ok(())
            }
        }
    }

    async fn next(&mut self) -> Option<Result<pb::ConsumeResponse, Error>> {
        loop {
            if let Some(m) = self.pending.pop_front() {
                return Some(Ok(pb::ConsumeResponse { message: Some(m) }));
            }
            if self.credits == 0 {
                if self.inbound_done {
                    return None;
                }
                let got = self.inbound.message().await;
                if let Err(e) = self.take(got) {
                    return Some(Err(e));
                }
                continue;
            }
            let want = (self.credits as usize).min(self.handler.settings.max_lease_batch);
            let give_up = Instant::now() + WAIT_SLICE;
            let ctx = self.ctx.renewed(WAIT_SLICE + self.ctx.store_timeout() * 2);
            // The lease owns what it needs and is never dropped half-way: a
            // lease script already sent has leased its messages, and they
            // must reach the consumer. Credits that arrive meanwhile are
            // counted while it runs.
            let (handler, tenant, queue, lease_ms) = (
                self.handler.clone(),
                self.tenant.clone(),
                self.queue.clone(),
                self.lease_ms,
            );
            let lease = async move {
                handler
                    .lease_waiting(&ctx, &tenant, &queue, want, lease_ms, give_up)
                    .await
            };
            tokio::pin!(lease);
            let leased = loop {
                tokio::select! {
                    leased = &mut lease => break leased,
                    got = self.inbound.message(), if !self.inbound_done => {
                        if let Err(e) = self.take(got) {
                            return Some(Err(e));
                        }
                    }
                }
            };
            match leased {
                Ok(deliveries) => {
                    self.credits -= deliveries.len() as u64;
                    self.pending.extend(deliveries.into_iter().map(message));
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

impl Handler {
    pub(super) async fn consume(
        &self,
        ctx: Ctx,
        mut inbound: tonic::Streaming<pb::ConsumeRequest>,
    ) -> Result<impl Stream<Item = Result<pb::ConsumeResponse, Error>> + Send + 'static, Error>
    {
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
            inbound,
            credits,
            inbound_done: false,
            pending: VecDeque::new(),
        };
        Ok(futures::stream::unfold(consumer, |mut c| async move {
            c.next().await.map(|item| (item, c))
        }))
    }
}
