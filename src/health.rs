//! `grpc.health.v1`: SERVING only while the store answers.
//!
//! A background probe pings the store on an interval and flips the overall
//! status ("") and every service's status together, so a Kubernetes
//! readiness probe takes a pod out of rotation while its Redis is away and
//! puts it back, with no restart, when Redis returns.
//!
//! [`LIVENESS`] is SERVING whenever the process serves at all: a liveness
//! probe must not restart pods because Redis is down.

use std::time::Duration;

use tokio::sync::watch;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::settings::{ms, secs};
use crate::store::Backend;

crate::section! {
    /// The health probe behind `grpc.health.v1`.
    pub struct HealthSettings {
        /// How often the background probe checks the store.
        pub probe_interval: Duration = ms(1000), range(ms(10), secs(3600));
        /// How long one probe may take before the store counts as down.
        pub probe_timeout: Duration = ms(500), range(ms(1), secs(60));
    }
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

    async fn store_answers(&self) -> bool {
        matches!(
            tokio::time::timeout(self.timeout, self.store.probe()).await,
            Ok(Ok(()))
        )
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
        let mut serving = None;
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|stopped| *stopped) => break,
            }
            let ok = self.store_answers().await;
            metrics::gauge!(crate::metrics::STORE_UP).set(if ok { 1.0 } else { 0.0 });
            if serving != Some(ok) {
                if ok {
                    tracing::info!("store answers; health SERVING");
                    self.set_all(ServingStatus::Serving).await;
                } else {
                    tracing::warn!("store does not answer; health NOT_SERVING");
                    self.set_all(ServingStatus::NotServing).await;
                }
                serving = Some(ok);
            }
        }
        self.set_all(ServingStatus::NotServing).await;
        self.reporter
            .set_service_status(LIVENESS, ServingStatus::NotServing)
            .await;
    }
}
