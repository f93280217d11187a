//! The audit log: every administrative call, per tenant, in a bounded log
//! (`audit.max_entries`, oldest out first), readable by the tenant through
//! `datalayer.audit.v1.AuditService`. The call path records events
//! ([`crate::audit`]); [`Sink`] queues them and a writer stores them in
//! batches, off the calls' path — an event that cannot be stored (the
//! queue is full, Redis is down) is still in the log output under the
//! `audit` target, and counted in `datalayer_audit_dropped_total`.

mod grpc;
mod memory;
mod redis;
pub mod settings;
pub mod sink;

pub use settings::Settings;
pub use sink::Sink;

use crate::keys::Space;
use crate::registry::{Module, RegisterError, Registrar};

/// Each tenant's log (a stream, bounded by length).
pub const LOG_SPACE: Space = Space::durable("au");

pub struct Service;

impl Module for Service {
    const NAME: &'static str = "audit";
    type Settings = Settings;
    const SPACES: &'static [Space] = &[LOG_SPACE];

    fn register(settings: &Settings, registrar: &mut Registrar<'_>) -> Result<(), RegisterError> {
        let Some(log) = registrar.shared().audit else {
            return Err(RegisterError {
                service: Self::NAME,
                message: "no audit log was started".to_owned(),
            });
        };
        registrar.add(grpc::Handler::new(log, settings.clone()));
        Ok(())
    }
}
