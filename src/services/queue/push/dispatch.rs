//! The dispatcher: one per replica. Every `queue.push.poll_interval` it
//! reads the destinations of the tenants it knows and keeps one worker per
//! push queue; a worker leases as many messages as its destination has
//! free parallelism, POSTs each (paced by the destination's rate), and
//! acks or nacks it by the answer. Replicas share the work through the
//! leases, as pull consumers do.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use tokio::sync::{Notify, watch};

use super::Destination;
use super::sign::Signer;
use super::store::Destinations;
use crate::keys::Tenant;
use crate::services::queue::schedule::Ticker;
use crate::services::queue::store::{Limits, Store};
use crate::services::queue::{Delivery, LeaseCheck, Settings, token_seeds};
use crate::store::memory::lock;

/// Extra lease time past the delivery's timeout.
const LEASE_MARGIN_MS: u64 = 5_000;

/// A push queue's worker: told its destination, `None` to stop.
type Worker = watch::Sender<Option<Destination>>;

pub const PUSH_DELIVERIES: &str = "datalayer_queue_push_deliveries_total";

pub struct Dispatcher {
    store: Arc<dyn Store>,
    destinations: Arc<dyn Destinations>,
    settings: Settings,
    signer: Option<Signer>,
    client: reqwest::Client,
    ticker: Arc<Ticker>,
    workers: Mutex<HashMap<(Tenant, String), Worker>>,
}

fn random() -> f64 {
    (getrandom::u64().unwrap_or(0) as f64 / u64::MAX as f64).min(0.999_999)
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What one POST came to.
enum Outcome {
    Ok { status: u16, body: Vec<u8> },
    Failed(String),
}

impl Dispatcher {
    pub fn new(
        store: Arc<dyn Store>,
        destinations: Arc<dyn Destinations>,
        settings: Settings,
        signer: Option<Signer>,
        ticker: Arc<Ticker>,
    ) -> Result<Arc<Self>, String> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("datalayer/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("the push HTTP client: {e}"))?;
        Ok(Arc::new(Self {
            store,
            destinations,
            settings,
            signer,
            client,
            ticker,
            workers: Mutex::new(HashMap::new()),
        }))
    }

    pub fn start(self: &Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(me.settings.push.poll_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.wait_for(|s| *s) => {
                        lock(&me.workers).clear();
                        return;
                    }
                }
                for tenant in me.ticker.tenants() {
                    if let Err(e) = me.scan(&tenant).await {
                        tracing::debug!(%tenant, error = %e, "push destinations not read");
                    }
                }
            }
        });
    }

    /// Starts, updates or stops the tenant's workers to match its
    /// destinations.
    async fn scan(self: &Arc<Self>, tenant: &Tenant) -> Result<(), crate::store::StoreError> {
        let all = self.destinations.all(tenant).await?;
        let mut workers = lock(&self.workers);
        workers.retain(|(t, q), tx| t != tenant || all.contains_key(q) && !tx.is_closed());
        for (queue, dest) in all {
            let key = (tenant.clone(), queue.clone());
            match workers.get(&key) {
                Some(tx) => {
                    tx.send_if_modified(|d| {
                        let changed = d.as_ref() != Some(&dest);
                        *d = Some(dest.clone());
                        changed
                    });
                }
                None => {
                    let (tx, rx) = watch::channel(Some(dest));
                    workers.insert(key, tx);
                    tokio::spawn(self.clone().work(tenant.clone(), queue, rx));
                }
            }
        }
        Ok(())
    }

    fn limits(&self) -> Limits {
        Limits {
            max_messages: self.settings.max_messages,
            done_retention_ms: self.settings.done_retention.as_millis() as u64,
        }
    }

    /// One push queue's worker, until its destination goes.
    async fn work(
        self: Arc<Self>,
        tenant: Tenant,
        queue: String,
        rx: watch::Receiver<Option<Destination>>,
    ) {
        let in_flight = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(Notify::new());
        let mut next_slot = tokio::time::Instant::now();
        let poll = self.settings.push.poll_interval;
        loop {
            if rx.borrow().is_none() || rx.has_changed().is_err() {
                return;
            }
            // Read again before every lease: a cleared or changed
            // destination takes effect at once on every replica.
            let dest = match self.destinations.get(&tenant, &queue).await {
                Ok(Some(dest)) => dest,
                Ok(None) => return,
                Err(_) => {
                    tokio::time::sleep(poll).await;
                    continue;
                }
            };
            let free =
                (dest.parallelism as usize).saturating_sub(in_flight.load(Ordering::Acquire));
            if free == 0 {
                tokio::select! {
                    _ = done.notified() => {}
                    _ = tokio::time::sleep(poll) => {}
                }
                continue;
            }
            // Paced deliveries are leased one at a time, so none waits for
            // its turn past its lease.
            let want = if dest.rate_per_second > 0.0 {
                1
            } else {
                free.min(self.settings.max_lease_batch)
            };
            let Ok(seeds) = token_seeds(want) else {
                tokio::time::sleep(poll).await;
                continue;
            };
            let leased = self
                .store
                .lease(
                    &tenant,
                    &queue,
                    want,
                    Some(dest.timeout_ms + LEASE_MARGIN_MS),
                    &seeds,
                    random(),
                )
                .await;
            let deliveries = match leased {
                Ok(l) => l.deliveries,
                Err(e) => {
                    tracing::debug!(%tenant, %queue, error = %e, "push lease failed");
                    Vec::new()
                }
            };
            if deliveries.is_empty() {
                tokio::time::sleep(poll).await;
                continue;
            }
            for d in deliveries {
                if dest.rate_per_second > 0.0 {
                    let gap = Duration::from_secs_f64(1.0 / dest.rate_per_second);
                    next_slot = next_slot.max(tokio::time::Instant::now());
                    tokio::time::sleep_until(next_slot).await;
                    next_slot += gap;
                }
                in_flight.fetch_add(1, Ordering::AcqRel);
                let (me, tenant, queue, dest) =
                    (self.clone(), tenant.clone(), queue.clone(), dest.clone());
                let (in_flight, done) = (in_flight.clone(), done.clone());
                tokio::spawn(async move {
                    me.deliver(&tenant, &queue, &dest, d).await;
                    in_flight.fetch_sub(1, Ordering::AcqRel);
                    done.notify_one();
                });
            }
        }
    }

    async fn post(
        &self,
        url: &str,
        dest: &Destination,
        d: &Delivery,
        body: Vec<u8>,
        queue: &str,
        content_type: &str,
    ) -> Outcome {
        let allowed = url::Url::parse(url).is_ok_and(|u| self.settings.push.allowed(&u));
        let Some(signer) = self.signer.as_ref().filter(|_| allowed) else {
            return Outcome::Failed(
                "the destination is no longer allowed, or no signing key".to_owned(),
            );
        };
        let signature = signer.sign(url, &body, &d.id, queue, now_s());
        let mut req = self
            .client
            .post(url)
            .timeout(Duration::from_millis(dest.timeout_ms));
        let mut typed = false;
        for (k, v) in d.headers.iter().chain(&dest.headers) {
            if k.eq_ignore_ascii_case("content-type") {
                if typed {
                    continue;
                }
                typed = true;
            }
            // A header the service sets (its own, Host, framing), or one
            // that is not valid HTTP, is not sent: a message cannot aim
            // a delivery at another virtual host.
            if super::header(k, v).is_ok() {
                req = req.header(k.as_str(), v.as_str());
            }
        }
        if !typed {
            req = req.header("content-type", content_type);
        }
        req = req
            .header("datalayer-signature", signature)
            .header("datalayer-message-id", d.id.as_str())
            .header("datalayer-attempt", d.attempt.to_string())
            .header("datalayer-queue", queue);
        match req.body(body).send().await {
            Err(e) => Outcome::Failed(format!("delivery failed: {e}")),
            Ok(mut resp) => {
                let status = resp.status().as_u16();
                let cap = self.settings.push.max_response_bytes;
                let mut kept = Vec::new();
                while kept.len() < cap {
                    match resp.chunk().await {
                        Ok(Some(chunk)) => {
                            kept.extend_from_slice(&chunk[..chunk.len().min(cap - kept.len())])
                        }
                        _ => break,
                    }
                }
                if (200..300).contains(&status) {
                    Outcome::Ok { status, body: kept }
                } else {
                    Outcome::Failed(format!("the destination answered HTTP {status}"))
                }
            }
        }
    }

    async fn deliver(&self, tenant: &Tenant, queue: &str, dest: &Destination, d: Delivery) {
        let outcome = self
            .post(
                &dest.url,
                dest,
                &d,
                d.payload.clone(),
                queue,
                "application/octet-stream",
            )
            .await;
        match outcome {
            Outcome::Ok { status, body } => {
                metrics::counter!(PUSH_DELIVERIES, "result" => "ok").increment(1);
                match self
                    .store
                    .ack(tenant, queue, &d.id, &d.token, self.limits())
                    .await
                {
                    Ok(LeaseCheck::Done(())) if !dest.callback_url.is_empty() => {
                        let report = serde_json::json!({
                            "queue": queue, "message_id": d.id, "attempt": d.attempt,
                            "status": status,
                            "body": base64::engine::general_purpose::STANDARD.encode(&body),
                        });
                        self.callback(&dest.callback_url, dest, &d, report, queue)
                            .await;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(%tenant, %queue, id = %d.id, error = %e, "push ack failed; the message will be delivered again")
                    }
                }
            }
            Outcome::Failed(why) => {
                metrics::counter!(PUSH_DELIVERIES, "result" => "failed").increment(1);
                let nacked = self
                    .store
                    .nack(tenant, queue, &d.id, &d.token, None, false, &why, random())
                    .await;
                if let Ok(LeaseCheck::Done(true)) = nacked
                    && !dest.failure_callback_url.is_empty()
                {
                    let report = serde_json::json!({
                        "queue": queue, "message_id": d.id, "attempt": d.attempt, "error": why,
                    });
                    self.callback(&dest.failure_callback_url, dest, &d, report, queue)
                        .await;
                }
            }
        }
    }

    /// A callback is one signed POST, not retried: the outcome is also in
    /// the queue (acked, or in the dead letters).
    async fn callback(
        &self,
        url: &str,
        dest: &Destination,
        d: &Delivery,
        report: serde_json::Value,
        queue: &str,
    ) {
        let body = serde_json::to_vec(&report).unwrap_or_default();
        let plain = Delivery {
            headers: Default::default(),
            ..d.clone()
        };
        let cb = Destination {
            headers: Default::default(),
            ..dest.clone()
        };
        if let Outcome::Failed(why) = self
            .post(url, &cb, &plain, body, queue, "application/json")
            .await
        {
            metrics::counter!(PUSH_DELIVERIES, "result" => "callback_failed").increment(1);
            tracing::info!(%queue, id = %d.id, %why, "push callback failed");
        }
    }
}
