//! `grpc.health.v1`: SERVING only while the store takes reads and writes.
//!
//! A background probe writes a short-lived key on an interval (see
//! `store::redis::probe`) and flips the overall status ("") and every
//! service's status together, so a Kubernetes readiness probe takes a pod
//! out of rotation while its Redis is away, full or read-only, and puts it
//! back, with no restart, when Redis is well again. Why it is not serving
//! (unreachable, out of memory, read-only, authentication, database) is
//! logged once per change.
//!
//! [`LIVENESS`] is SERVING whenever the process serves at all: a liveness
//! probe must not restart pods because Redis is down.

use std::time::Duration;

use tokio::sync::watch;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::settings::{ms, secs};
use crate::store::{Backend, StoreError, StoreErrorKind};

crate::section! {
    /// The health probe behind `grpc.health.v1`.
    pub struct HealthSettings {
        /// How often the background probe checks the store.
        pub probe_interval: Duration = ms(1000), range(ms(10), secs(3600));
        /// How long one probe may take before the store counts as down.
        pub probe_timeout: Duration = ms(500), range(ms(1), secs(60));
    }
}

/// A short, stable name for why the store cannot serve, and the detail.
fn reason(e: &StoreError) -> (&'static str, String) {
    let text = e.to_string();
    let label = match e.kind {
        StoreErrorKind::Full => "out_of_memory",
        StoreErrorKind::Misconfigured if text.contains("read-only replica") => "read_only",
        StoreErrorKind::Misconfigured if text.contains("credentials") => "authentication",
        StoreErrorKind::Misconfigured if text.contains("no such database") => "unknown_database",
        StoreErrorKind::Misconfigured => "misconfigured",
        StoreErrorKind::Unavailable => "unreachable",
        StoreErrorKind::Internal => "internal",
    };
    (label, text)
}

/// The health service name a liveness probe asks for.
pub const LIVENESS: &str = "liveness";

pub struct Probe {
    pub reporter: HealthReporter,
    pub store: Backend,
    /// Fully-qualified service names reported besides "".
    pub services: Vec<&'static str>,
    pub interval: Duration,
    pub timeout: Duration,
}

impl Probe {
    async fn set_all(&self, status: ServingStatus) {
        self.reporter.set_service_status("", status).await;
        for service in &self.services {
            self.reporter.set_service_status(*service, status).await;
        }
    }

    /// `None` when the store takes writes, else why not.
    async fn store_problem(&self) -> Option<(&'static str, String)> {
        match tokio::time::timeout(self.timeout, self.store.probe()).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(reason(&e)),
            Err(_) => Some((
                "unreachable",
                format!(
                    "no answer within {} (health.probe_timeout)",
                    crate::validate::duration(self.timeout)
                ),
            )),
        }
    }

    /// Reports NOT_SERVING everywhere (tonic-health starts "" as SERVING),
    /// then probes in the background; the first probe runs at once.
    pub async fn start(self, stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        self.set_all(ServingStatus::NotServing).await;
        self.reporter
            .set_service_status(LIVENESS, ServingStatus::Serving)
            .await;
        tokio::spawn(self.run(stop))
    }

    /// Probes until `stop` turns true, then reports NOT_SERVING so load
    /// balancers drain this instance during shutdown.
    async fn run(self, mut stop: watch::Receiver<bool>) {
        // The last state reported: None for SERVING, else the reason.
        let mut reported: Option<Option<&'static str>> = None;
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|stopped| *stopped) => break,
            }
            let problem = self.store_problem().await;
            metrics::gauge!(crate::metrics::STORE_UP).set(if problem.is_none() {
                1.0
            } else {
                0.0
            });
            let state = problem.as_ref().map(|(label, _)| *label);
            if reported != Some(state) {
                match &problem {
                    None => {
                        tracing::info!("store takes reads and writes; health SERVING");
                        self.set_all(ServingStatus::Serving).await;
                    }
                    Some((label, detail)) => {
                        tracing::warn!(
                            reason = label,
                            "store cannot serve writes: {detail}; health NOT_SERVING"
                        );
                        self.set_all(ServingStatus::NotServing).await;
                    }
                }
                reported = Some(state);
            }
        }
        self.set_all(ServingStatus::NotServing).await;
        self.reporter
            .set_service_status(LIVENESS, ServingStatus::NotServing)
            .await;
    }
}
