//! `SetDestination` and `GetDestination`: a queue's push destination.

use std::collections::BTreeMap;

use super::Handler;
use crate::error::Error;
use crate::grpc::Ctx;
use crate::grpc::convert::{duration_in, duration_out};
use crate::proto::datalayer::queue::v1 as pb;
use crate::services::queue::push::Destination;
use crate::services::queue::push::store::Put;

fn destination_out(d: &Destination) -> pb::Destination {
    pb::Destination {
        url: d.url.clone(),
        timeout: Some(duration_out(d.timeout_ms * 1000)),
        parallelism: d.parallelism,
        rate_per_second: d.rate_per_second,
        callback_url: d.callback_url.clone(),
        failure_callback_url: d.failure_callback_url.clone(),
        headers: d.headers.clone().into_iter().collect(),
    }
}

impl Handler {
    pub(super) async fn set_destination(
        &self,
        ctx: Ctx,
        req: pb::SetDestinationRequest,
    ) -> Result<pb::SetDestinationResponse, Error> {
        self.queue(&ctx, &req.queue)?;
        ctx.audit_target(req.queue.clone());
        let push = &self.settings.push;
        let dest = match req.destination.as_ref().filter(|d| !d.url.is_empty()) {
            None => None,
            Some(d) => {
                let timeout = duration_in(d.timeout.as_ref(), "destination.timeout")?;
                let headers: BTreeMap<String, String> = d.headers.clone().into_iter().collect();
                Some(
                    push.destination(
                        &d.url,
                        timeout,
                        d.parallelism,
                        d.rate_per_second,
                        &d.callback_url,
                        &d.failure_callback_url,
                        &headers,
                    )
                    .map_err(|e| e.under("destination"))?,
                )
            }
        };
        let put = ctx
            .store(self.destinations.put(
                &ctx.tenant,
                &req.queue,
                dest.as_ref(),
                push.max_destinations,
            ))
            .await?;
        if put == Put::Full {
            return Err(Error::ResourceExhausted(format!(
                "this tenant has {} push queues, the most queue.push.max_destinations allows",
                push.max_destinations
            )));
        }
        Ok(pb::SetDestinationResponse {
            destination: dest.as_ref().map(destination_out),
        })
    }

    pub(super) async fn get_destination(
        &self,
        ctx: Ctx,
        req: pb::GetDestinationRequest,
    ) -> Result<pb::GetDestinationResponse, Error> {
        self.queue(&ctx, &req.queue)?;
        let all = ctx.store(self.destinations.all(&ctx.tenant)).await?;
        let found = all.get(&req.queue);
        Ok(pb::GetDestinationResponse {
            found: found.is_some(),
            destination: found.map(destination_out),
        })
    }
}
