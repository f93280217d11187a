//! `Subscribe`: replay, then follow live.
//!
//! Fan-out (no group): replay from the store up to the feed of the topic
//! on this replica (see `hub.rs`), then the feed; ids already replayed are
//! skipped, so nothing is missed or repeated. Retention that trimmed what
//! the subscriber asked for is a `gap` event; a subscriber whose buffer
//! overflowed gets `fell_behind` with the id to resume after, and its
//! stream ends.
//!
//! Group: the member reads its group's next messages (pending ones idle
//! past the ack timeout first, then new ones) every `topic.poll_interval`
//! while the group has nothing for it; a store failure ends the stream
//! (UNAVAILABLE) and the member subscribes again.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::sync::broadcast;

use super::{Handler, id_in, message_out, topic_name};
use crate::error::Error;
use crate::grpc::Ctx;
use crate::grpc::convert::{duration_in, timestamp_in};
use crate::grpc::slots::Slot;
use crate::keys::Tenant;
use crate::proto::datalayer::topic::v1::{self as pb, subscribe_request::From};
use crate::services::topic::hub::Event;
use crate::services::topic::settings::group_name;
use crate::services::topic::store::Store;
use crate::services::topic::{GroupRead, Msg, MsgId, Retention};
use crate::store::StoreError;
use crate::validate;

enum Mode {
    /// Replaying from the store, then following `rx`.
    Fanout {
        rx: broadcast::Receiver<Event>,
        replaying: bool,
    },
    Group {
        read: GroupRead,
        retention: Retention,
    },
}

struct Subscriber {
    store: Arc<dyn Store>,
    tenant: Tenant,
    topic: String,
    mode: Mode,
    /// Fan-out: the last id sent.
    last: MsgId,
    batch: usize,
    poll: Duration,
    store_timeout: Duration,
    pending: VecDeque<pb::SubscribeResponse>,
    ended: bool,
    _slot: Slot,
}

fn message(m: &Msg) -> pb::SubscribeResponse {
    pb::SubscribeResponse {
        event: Some(pb::subscribe_response::Event::Message(message_out(m))),
    }
}

fn gap(first_kept: MsgId) -> pb::SubscribeResponse {
    pb::SubscribeResponse {
        event: Some(pb::subscribe_response::Event::Gap(pb::Gap {
            first_kept_id: first_kept.to_string(),
        })),
    }
}

impl Subscriber {
    async fn timed<T>(
        &self,
        op: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout(self.store_timeout, op).await {
            Ok(result) => result.map_err(Error::Store),
            Err(_) => Err(Error::Store(StoreError::unavailable(
                "the store did not answer a subscription's read within redis.command_timeout",
            ))),
        }
    }

    /// Fills `pending`; `Ok(false)` when the stream is over.
    async fn fill(&mut self) -> Result<bool, Error> {
        match &mut self.mode {
            Mode::Fanout {
                replaying: true, ..
            } => {
                let read = self
                    .timed(
                        self.store
                            .read(&self.tenant, &self.topic, self.last, self.batch),
                    )
                    .await?;
                if read.max_deleted > self.last
                    && let Some(first) = read.first_kept
                    && first > self.last
                {
                    self.pending.push_back(gap(first));
                }
                if read.messages.len() < self.batch
                    && let Mode::Fanout { replaying, .. } = &mut self.mode
                {
                    *replaying = false;
                }
                for m in &read.messages {
                    self.last = self.last.max(m.id);
                    self.pending.push_back(message(m));
                }
                Ok(true)
            }
            Mode::Fanout { rx, .. } => match rx.recv().await {
                Ok(Event::Msg(m)) => {
                    if m.id > self.last {
                        self.last = m.id;
                        self.pending.push_back(message(&m));
                    }
                    Ok(true)
                }
                Ok(Event::Gap(first)) => {
                    if first > self.last {
                        self.pending.push_back(gap(first));
                    }
                    Ok(true)
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    self.pending.push_back(pb::SubscribeResponse {
                        event: Some(pb::subscribe_response::Event::FellBehind(pb::FellBehind {
                            resume_after_id: self.last.to_string(),
                        })),
                    });
                    Ok(false)
                }
                Err(broadcast::error::RecvError::Closed) => Err(Error::Store(
                    StoreError::unavailable("the topic's feed stopped; subscribe again"),
                )),
            },
            Mode::Group { read, retention } => {
                let (read, retention) = (read.clone(), *retention);
                let got = self
                    .timed(
                        self.store
                            .group_read(&self.tenant, &self.topic, &read, retention),
                    )
                    .await?;
                if got.is_empty() {
                    tokio::time::sleep(self.poll).await;
                }
                self.pending.extend(got.iter().map(message));
                Ok(true)
            }
        }
    }

    async fn next(&mut self) -> Option<Result<pb::SubscribeResponse, Error>> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(Ok(item));
            }
            if self.ended {
                return None;
            }
            match self.fill().await {
                Ok(true) => {}
                Ok(false) => self.ended = true,
                Err(e) => {
                    self.ended = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

impl Handler {
    pub(super) async fn subscribe(
        &self,
        ctx: Ctx,
        req: pb::SubscribeRequest,
    ) -> Result<impl Stream<Item = Result<pb::SubscribeResponse, Error>> + Send + 'static, Error>
    {
        let s = &self.settings;
        let from = match &req.from {
            None | Some(From::Latest(_)) => Ok(None),
            Some(From::AfterId(id)) => id_in(id, "after_id").map(Some),
            Some(From::Since(t)) => {
                timestamp_in(Some(t), "since").map(|ms| ms.map(MsgId::before_time))
            }
        };
        let grouped = !req.group.is_empty();
        let (_, from, _, _, ack_ms) = validate::all((
            topic_name(&req.topic),
            from,
            if grouped {
                group_name(&req.group, "group")
            } else {
                Ok(())
            },
            if req.consumer.is_empty() {
                Ok(())
            } else {
                group_name(&req.consumer, "consumer")
            },
            duration_in(req.ack_timeout.as_ref(), "ack_timeout")
                .and_then(|d| s.ack_timeout_ms(d, "ack_timeout")),
        ))?;
        let slot = self.subscribers.take(s.max_subscribers).map_err(|open| {
            Error::ResourceExhausted(format!(
                "{open} subscriptions are open on this instance, the most topic.max_subscribers allows; close one or subscribe through another instance"
            ))
        })?;
        let mode = if grouped {
            let start = match from {
                Some(id) => id,
                None => {
                    ctx.store(self.store.last_id(&ctx.tenant, &req.topic))
                        .await?
                }
            };
            let consumer = if req.consumer.is_empty() {
                crate::random::hex(8).map_err(|e| Error::Internal(e.to_string()))?
            } else {
                req.consumer.clone()
            };
            Mode::Group {
                read: GroupRead {
                    group: req.group.clone(),
                    consumer,
                    start,
                    count: s.group_prefetch,
                    claim_idle_ms: ack_ms,
                },
                retention: s.retention(),
            }
        } else {
            let (feed, rx) = self.hub.attach(&ctx.tenant, &req.topic);
            let start = tokio::time::timeout_at(ctx.deadline(), feed.start())
                .await
                .map_err(|_| {
                    Error::Store(StoreError::unavailable(
                        "the topic's feed could not read the store before the deadline",
                    ))
                })?;
            let last = match from {
                Some(id) => id,
                None => start.max(
                    ctx.store(self.store.last_id(&ctx.tenant, &req.topic))
                        .await?,
                ),
            };
            return Ok(self.stream(
                ctx,
                req.topic,
                Mode::Fanout {
                    rx,
                    replaying: true,
                },
                last,
                slot,
            ));
        };
        Ok(self.stream(ctx, req.topic, mode, MsgId::ZERO, slot))
    }

    fn stream(
        &self,
        ctx: Ctx,
        topic: String,
        mode: Mode,
        last: MsgId,
        slot: Slot,
    ) -> impl Stream<Item = Result<pb::SubscribeResponse, Error>> + Send + 'static {
        let subscriber = Subscriber {
            store: self.store.clone(),
            tenant: ctx.tenant.clone(),
            topic,
            mode,
            last,
            batch: self.settings.read_batch,
            poll: self.settings.poll_interval,
            store_timeout: ctx.store_timeout(),
            pending: VecDeque::new(),
            ended: false,
            _slot: slot,
        };
        futures::stream::unfold(subscriber, |mut s| async move {
            s.next().await.map(|item| (item, s))
        })
    }
}
