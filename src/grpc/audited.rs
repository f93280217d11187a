//! The audit event of an administrative call: who, what, how it ended.
//! The handler names what it acted on ([`Ctx::audit_target`]); the call
//! path records the event when the call ends, whatever the outcome.

use std::sync::Arc;

use tonic::Code;

use super::context::Ctx;
use super::serve::{Method, Shared};
use crate::audit::AuditEvent;
use crate::keys::Tenant;
use crate::metrics as m;

/// What an audited call leaves behind to record when it ends.
pub(super) struct Audit {
    tenant: Tenant,
    principal: Arc<str>,
    target: Arc<std::sync::OnceLock<String>>,
}

impl Audit {
    pub(super) fn of(method: &Method, ctx: &Ctx) -> Option<Self> {
        method.audited.then(|| Self {
            tenant: ctx.tenant.clone(),
            principal: ctx.principal().clone(),
            target: ctx.audit_slot(),
        })
    }

    pub(super) fn record(self, shared: &Shared, method: &'static Method, code: Code) {
        let event = AuditEvent {
            tenant: self.tenant,
            principal: self.principal,
            method: method.full.to_owned(),
            target: self.target.get().cloned().unwrap_or_default(),
            outcome: m::code_label(code).to_owned(),
            at_us: crate::audit::now_us(),
        };
        tracing::info!(
            target: "audit",
            tenant = %event.tenant,
            principal = %event.principal,
            method = %event.method,
            target_ = %event.target,
            outcome = %event.outcome,
            "audited call"
        );
        metrics::counter!(m::AUDIT_EVENTS, "method" => method.method).increment(1);
        if let Some(log) = &shared.audit {
            log.record(event);
        }
    }
}
