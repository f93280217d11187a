//! `datalayer.topic.v1.TopicService`: the wire ↔ the domain, then the
//! store. `Subscribe` is in `grpc/subscribe.rs`.

mod subscribe;

use std::collections::BTreeMap;
use std::sync::Arc;

use super::hub::Hub;
use super::settings::{Settings, group_name};
use super::store::Store;
use super::{MsgId, NewMsg};
use crate::error::Error;
use crate::grpc::Ctx;
use crate::grpc::convert::timestamp_ms_out;
use crate::proto::datalayer::topic::v1 as pb;
use crate::validate::{self, FieldViolation, Invalid};

pub struct Handler {
    store: Arc<dyn Store>,
    settings: Settings,
    hub: Arc<Hub>,
    /// `Subscribe` streams open now (bounded by `topic.max_subscribers`).
    subscribers: crate::grpc::slots::Slots,
}

crate::grpc_service! {
    pb::topic_service_server::{TopicService, TopicServiceServer} for Handler {
        unary Publish => publish(pb::PublishRequest) -> pb::PublishResponse;
        unary PublishBatch => publish_batch(pb::PublishBatchRequest) -> pb::PublishBatchResponse;
        unary Ack => ack(pb::AckRequest) -> pb::AckResponse;
        unary GetTopicStats => get_topic_stats(pb::GetTopicStatsRequest) -> pb::GetTopicStatsResponse;
        unary DeleteTopic => delete_topic(pb::DeleteTopicRequest) -> pb::DeleteTopicResponse;
        stream Subscribe => subscribe(pb::SubscribeRequest) -> pb::SubscribeResponse as SubscribeStream;
    }
}

fn topic_name(topic: &str) -> Result<(), FieldViolation> {
    validate::name(topic, "topic")
}

/// A message id a caller sends back.
pub fn id_in(text: &str, field: &str) -> Result<MsgId, FieldViolation> {
    MsgId::parse(text).ok_or_else(|| {
        FieldViolation::new(
            field,
            format!(
                "must be a message id (<ms>-<seq>), got {}",
                validate::quote(text)
            ),
        )
    })
}

pub fn message_out(m: &super::Msg) -> pb::Message {
    pb::Message {
        id: m.id.to_string(),
        payload: m.payload.clone(),
        headers: m.headers.clone().into_iter().collect(),
        publish_time: Some(timestamp_ms_out(m.id.0)),
        delivery_count: m.deliveries,
    }
}

impl Handler {
    pub fn new(store: Arc<dyn Store>, settings: Settings) -> Self {
        let hub = Hub::new(
            store.clone(),
            settings.poll_interval,
            settings.subscriber_buffer,
            settings.read_batch,
        );
        Self {
            store,
            settings,
            hub,
            subscribers: Default::default(),
        }
    }

    fn message(
        &self,
        payload: &[u8],
        headers: &std::collections::HashMap<String, String>,
    ) -> Result<NewMsg, Invalid> {
        validate::all((
            self.settings.payload(payload, "payload"),
            self.settings.headers(headers, "headers"),
        ))?;
        Ok(NewMsg {
            payload: payload.to_vec(),
            headers: headers.clone().into_iter().collect::<BTreeMap<_, _>>(),
        })
    }

    async fn append(&self, ctx: &Ctx, topic: &str, msgs: &[NewMsg]) -> Result<Vec<MsgId>, Error> {
        let ids = ctx
            .store(
                self.store
                    .publish(&ctx.tenant, topic, msgs, self.settings.retention()),
            )
            .await?;
        self.hub.wake(&ctx.tenant, topic);
        Ok(ids)
    }

    async fn publish(
        &self,
        ctx: Ctx,
        req: pb::PublishRequest,
    ) -> Result<pb::PublishResponse, Error> {
        let (_, msg) = validate::all((
            topic_name(&req.topic),
            self.message(&req.payload, &req.headers),
        ))?;
        let ids = self
            .append(&ctx, &req.topic, std::slice::from_ref(&msg))
            .await?;
        let id = ids
            .first()
            .ok_or_else(|| Error::Internal("the store answered no id".to_owned()))?;
        Ok(pb::PublishResponse { id: id.to_string() })
    }

    async fn publish_batch(
        &self,
        ctx: Ctx,
        req: pb::PublishBatchRequest,
    ) -> Result<pb::PublishBatchResponse, Error> {
        let msgs = validate::each(&req.messages, "messages", |m| {
            self.message(&m.payload, &m.headers)
        });
        let (_, _, msgs) = validate::all((
            topic_name(&req.topic),
            self.settings.batch(req.messages.len(), "messages"),
            msgs,
        ))?;
        let ids = self.append(&ctx, &req.topic, &msgs).await?;
        Ok(pb::PublishBatchResponse {
            ids: ids.iter().map(MsgId::to_string).collect(),
        })
    }

    async fn ack(&self, ctx: Ctx, req: pb::AckRequest) -> Result<pb::AckResponse, Error> {
        let ids = validate::each(&req.ids, "ids", |id| id_in(id, ""));
        let (_, _, _, ids) = validate::all((
            topic_name(&req.topic),
            group_name(&req.group, "group"),
            self.settings.batch(req.ids.len(), "ids"),
            ids,
        ))?;
        let acked = ctx
            .store(self.store.ack(&ctx.tenant, &req.topic, &req.group, &ids))
            .await?;
        Ok(pb::AckResponse { acked })
    }

    async fn get_topic_stats(
        &self,
        ctx: Ctx,
        req: pb::GetTopicStatsRequest,
    ) -> Result<pb::GetTopicStatsResponse, Error> {
        topic_name(&req.topic)?;
        let stats = ctx.store(self.store.stats(&ctx.tenant, &req.topic)).await?;
        let local_subscribers = self.hub.subscribers(&ctx.tenant, &req.topic) as u64;
        let id = |id: Option<MsgId>| id.map(|i| i.to_string()).unwrap_or_default();
        Ok(match stats {
            None => pb::GetTopicStatsResponse {
                local_subscribers,
                ..Default::default()
            },
            Some(s) => pb::GetTopicStatsResponse {
                exists: true,
                length: s.length,
                first_id: id(s.first),
                last_id: id(s.last),
                groups: s
                    .groups
                    .into_iter()
                    .map(|g| pb::GroupStats {
                        name: g.name,
                        pending: g.pending,
                        consumers: g.consumers,
                        last_delivered_id: g.last_delivered.to_string(),
                    })
                    .collect(),
                local_subscribers,
            },
        })
    }

    async fn delete_topic(
        &self,
        ctx: Ctx,
        req: pb::DeleteTopicRequest,
    ) -> Result<pb::DeleteTopicResponse, Error> {
        topic_name(&req.topic)?;
        let deleted = ctx
            .store(self.store.delete(&ctx.tenant, &req.topic))
            .await?;
        Ok(pb::DeleteTopicResponse { deleted })
    }
}
