//! `datalayer.audit.v1.AuditService`: the caller's tenant's audit log.

use std::sync::Arc;

use super::Settings;
use crate::audit::AuditLog;
use crate::error::Error;
use crate::grpc::Ctx;
use crate::grpc::convert::timestamp_out;
use crate::proto::datalayer::audit::v1 as pb;
use crate::validate::FieldViolation;

pub struct Handler {
    log: Arc<dyn AuditLog>,
    settings: Settings,
}

crate::grpc_service! {
    pb::audit_service_server::{AuditService, AuditServiceServer} for Handler {
        unary List => list(pb::ListRequest) -> pb::ListResponse;
    }
}

/// Stream ids: `<ms>-<n>`.
fn is_cursor(text: &str) -> bool {
    text.len() <= 41
        && text.split_once('-').is_some_and(|(a, b)| {
            !a.is_empty() && !b.is_empty() && (a.to_owned() + b).bytes().all(|c| c.is_ascii_digit())
        })
}

impl Handler {
    pub fn new(log: Arc<dyn AuditLog>, settings: Settings) -> Self {
        Self { log, settings }
    }

    async fn list(&self, ctx: Ctx, req: pb::ListRequest) -> Result<pb::ListResponse, Error> {
        let max = self.settings.max_page_size;
        let limit = match req.limit as usize {
            0 => 100.min(max),
            n if n > max => {
                return Err(FieldViolation::new(
                    "limit",
                    format!("must be at most {max} (audit.max_page_size), got {n}"),
                )
                .into());
            }
            n => n,
        };
        if !req.cursor.is_empty() && !is_cursor(&req.cursor) {
            return Err(FieldViolation::new("cursor", "is not a cursor List returned").into());
        }
        let before = (!req.cursor.is_empty()).then_some(req.cursor.as_str());
        let mut stored = ctx
            .store(self.log.list(&ctx.tenant, limit + 1, before))
            .await?;
        let more = stored.len() > limit;
        stored.truncate(limit);
        let next_cursor = if more {
            stored.last().map(|s| s.id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        let events = stored
            .into_iter()
            .map(|s| pb::AuditEvent {
                id: s.id,
                time: Some(timestamp_out(s.event.at_us)),
                principal: s.event.principal.to_string(),
                method: s.event.method,
                target: s.event.target,
                outcome: s.event.outcome,
            })
            .collect();
        Ok(pb::ListResponse {
            events,
            next_cursor,
        })
    }
}
