use std::{sync::Arc, time::Duration};

use futures::{Stream, StreamExt, stream};

use super::{Settings, store::Store};
use crate::error::Error;
use crate::grpc::Ctx;
use crate::proto::datalayer::echo::v1 as pb;
use crate::validate::{self, FieldViolation};

pub struct Handler {
    pub store: Arc<dyn Store>,
    pub settings: Settings,
}

crate::grpc_service! {
    pb::echo_service_server::{EchoService, EchoServiceServer} for Handler {
        unary Say => say(pb::SayRequest) -> pb::SayResponse;
        stream Repeat => repeat(pb::RepeatRequest) -> pb::RepeatResponse as RepeatStream;
    }
}

impl Handler {
    fn text(&self, text: &str) -> Result<(), FieldViolation> {
        validate::text(text, "text", 1, self.settings.max_text_bytes)
    }

    async fn say(&self, ctx: Ctx, req: pb::SayRequest) -> Result<pb::SayResponse, Error> {
        self.text(&req.text)?;
        let count = ctx.store(self.store.say(&ctx.tenant, &req.text)).await?;
        Ok(pb::SayResponse {
            text: req.text,
            count,
        })
    }

    async fn repeat(
        &self,
        _ctx: Ctx,
        req: pb::RepeatRequest,
    ) -> Result<impl Stream<Item = Result<pb::RepeatResponse, Error>> + Send + 'static, Error> {
        let times = if req.times == 0 || req.times > self.settings.max_times {
            Err(FieldViolation::new(
                "times",
                format!(
                    "must be between 1 and {} (echo.max_times)",
                    self.settings.max_times
                ),
            ))
        } else {
            Ok(req.times)
        };
        let ((), times) = validate::all((self.text(&req.text), times))?;
        let interval = Duration::from_millis(u64::from(req.interval_ms));
        let text = req.text;
        Ok(stream::iter(0..times).then(move |index| {
            let text = text.clone();
            async move {
                if index > 0 {
                    tokio::time::sleep(interval).await;
                }
                Ok(pb::RepeatResponse { text, index })
            }
        }))
    }
}
