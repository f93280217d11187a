//! Audit events: who (principal and tenant) did what (method and target),
//! when, with what outcome. The call path ([`crate::grpc::serve`]) records
//! one for every administrative method ([`crate::access::Access`]);
//! the `audit` service stores them per tenant and serves them back.

use std::sync::Arc;

use crate::keys::Tenant;

/// One administrative call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub tenant: Tenant,
    /// The key id, `cert:<common name>`, or `anonymous`.
    pub principal: Arc<str>,
    /// `package.Service/Method`.
    pub method: String,
    /// What the call acted on, as the handler names it (may be empty).
    pub target: String,
    /// The gRPC status code's name (`OK`, `NOT_FOUND`, ...).
    pub outcome: String,
    /// Microseconds since the Unix epoch.
    pub at_us: u64,
}

/// An event as stored, with its id (ordered by time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub id: String,
    pub event: AuditEvent,
}

/// Where the call path sends audit events (recording never blocks a
/// call), and where the audit service reads them back.
#[async_trait::async_trait]
pub trait AuditLog: Send + Sync {
    fn record(&self, event: AuditEvent);
    /// Up to `limit` events of `tenant`, newest first, older than `before`.
    async fn list(
        &self,
        tenant: &Tenant,
        limit: usize,
        before: Option<&str>,
    ) -> Result<Vec<Stored>, crate::store::StoreError>;
}

/// Now, in microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// An audit target from what the caller named (`set/key`), each part cut
/// to 128 characters so a caller cannot grow the log with long names.
pub fn target(parts: &[&str]) -> String {
    parts
        .iter()
        .map(|p| p.chars().take(128).collect::<String>())
        .collect::<Vec<_>>()
        .join("/")
}
