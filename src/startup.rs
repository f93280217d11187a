//! Builds the [`Application`]: binds the listener (port 0 picks a free one,
//! as tests do), chooses the store, registers the services with health and
//! reflection, and serves until a shutdown signal, then drains in-flight
//! calls for at most `server.shutdown_grace`.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use deadpool_redis::redis::TlsCertificates;
use tokio::{net::TcpListener, sync::watch};
use tonic::{codec::CompressionEncoding, transport::Server};

use crate::{
    config::{RedisMode, Settings},
    health::Probe,
    keys::KeyBuilder,
    proto,
    rpc::Deadlines,
    services::{cache::CacheHandler, ratelimit::RateLimitHandler, session::SessionHandler},
    store::{Stores, memory::MemoryStore, redis::RedisStore},
};

/// Fully-qualified names of the services health reports on.
pub const SERVICE_NAMES: &[&str] = &[
    "datalayer.v1.RateLimitService",
    "datalayer.v1.CacheService",
    "datalayer.v1.SessionService",
];

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("`server.addr`: cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Redis(String),
    #[error("invalid configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("`metrics.addr`: cannot bind {addr}: {source}")]
    BindMetrics {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("metrics: {0}")]
    Metrics(String),
    #[error("reflection: {0}")]
    Reflection(String),
    #[error("server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    /// The `/metrics` listener, unless `metrics.enabled` is false.
    metrics: Option<(TcpListener, SocketAddr)>,
    settings: Settings,
    stores: Stores,
}

impl Application {
    /// Binds and builds everything; nothing is served until
    /// [`Application::run_until_stopped`].
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        settings.validate()?;
        // rustls needs one process-wide crypto provider for `rediss://`; a
        // second install (another app in this process) is refused, harmlessly.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let stores = match &settings.redis.url {
            None => Stores::memory(MemoryStore::new()),
            Some(url) => {
                let keys = KeyBuilder::new(&settings.keys.namespace);
                let tls = settings
                    .redis
                    .tls_ca_file
                    .as_ref()
                    .map(|path| {
                        std::fs::read(path)
                            .map(|pem| TlsCertificates {
                                client_tls: None,
                                root_cert: Some(pem),
                            })
                            .map_err(|e| {
                                StartupError::Redis(format!(
                                    "`redis.tls_ca_file`: cannot read {}: {e}",
                                    path.display()
                                ))
                            })
                    })
                    .transpose()?;
                let (r, redacted) = (&settings.redis, url.redacted());
                let store = match r.mode {
                    RedisMode::Standalone => RedisStore::new(url.expose(), redacted, r, keys, tls),
                    RedisMode::Cluster => RedisStore::cluster(&url.seeds(), redacted, r, keys, tls),
                }
                .map_err(|e| StartupError::Redis(e.to_string()))?;
                Stores::redis(Arc::new(store))
            }
        };
        Self::build_with_stores(settings, stores).await
    }

    /// As [`Application::build`], with a store made by the caller (tests).
    pub async fn build_with_stores(
        settings: Settings,
        stores: Stores,
    ) -> Result<Self, StartupError> {
        let addr = settings.server.addr;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartupError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| StartupError::Bind { addr, source })?;
        let metrics = if settings.metrics.enabled {
            let addr = settings.metrics.addr;
            let bind_error = |source| StartupError::BindMetrics { addr, source };
            let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
            let local = listener.local_addr().map_err(bind_error)?;
            Some((listener, local))
        } else {
            None
        };
        Ok(Self {
            listener,
            local_addr,
            metrics,
            settings,
            stores,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where `/metrics` is served, if it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|(_, addr)| *addr)
    }

    pub fn store_kind(&self) -> &'static str {
        self.stores.kind
    }

    /// Serves until `shutdown` completes, then stops accepting and lets
    /// in-flight calls finish within `server.shutdown_grace`.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartupError> {
        let Self {
            listener,
            local_addr,
            metrics,
            settings,
            stores,
        } = self;
        let s = &settings.server;
        let deadlines = Deadlines {
            default: s.default_timeout,
            max: s.max_timeout,
        };

        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        let (stop_tx, stop_rx) = watch::channel(false);
        let probe = Probe {
            reporter: health_reporter,
            store: stores.health.clone(),
            services: SERVICE_NAMES.to_vec(),
            interval: settings.health.probe_interval,
            timeout: settings.health.probe_timeout,
        };
        let probe_task = probe.start(stop_rx.clone()).await;
        let metrics_task = match metrics {
            Some((listener, addr)) => {
                let handle = crate::metrics::recorder().map_err(StartupError::Metrics)?;
                tracing::info!(%addr, "serving Prometheus metrics at /metrics");
                Some(tokio::spawn(crate::metrics::serve(
                    listener,
                    handle,
                    stores.health.clone(),
                    stop_rx,
                )))
            }
            None => None,
        };

        // grpcurl speaks v1alpha, newer tools v1: serve both.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        // Each builder adds its own protocol's descriptors; add the other's
        // so both list both reflection services.
        let reflection_v1 = reflection()
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
            .build_v1()
            .map_err(|e| StartupError::Reflection(e.to_string()))?;
        let reflection_v1alpha = reflection()
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(|e| StartupError::Reflection(e.to_string()))?;

        let policies = settings.policies()?;
        let ratelimit = RateLimitHandler::new(
            stores.ratelimit.clone(),
            KeyBuilder::new(&settings.keys.namespace),
            policies,
            settings.ratelimit.max_batch,
            deadlines,
        );
        let cache = CacheHandler::new(stores.cache.clone(), settings.cache.bounds(), deadlines);
        let sessions = SessionHandler::new(
            stores.sessions.clone(),
            settings.session.bounds(),
            deadlines,
        );

        // Every service gets the same message limits and compression.
        macro_rules! configured {
            ($server:ty, $handler:expr) => {
                <$server>::new($handler)
                    .max_decoding_message_size(s.max_request_bytes)
                    .max_encoding_message_size(s.max_response_bytes)
                    .accept_compressed(CompressionEncoding::Gzip)
                    .send_compressed(CompressionEncoding::Gzip)
            };
        }
        let ratelimit = configured!(
            proto::rate_limit_service_server::RateLimitServiceServer<_>,
            ratelimit
        );
        let cache = configured!(proto::cache_service_server::CacheServiceServer<_>, cache);
        let sessions = configured!(
            proto::session_service_server::SessionServiceServer<_>,
            sessions
        );

        let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down: no new calls, draining in-flight ones");
            let _ = stop_tx.send(true);
            let _ = drain_tx.send(());
        };

        tracing::info!(addr = %local_addr, store = stores.kind, "datalayer serving gRPC");
        let server = Server::builder()
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(ratelimit)
            .add_service(cache)
            .add_service(sessions)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                signal,
            );

        let grace = s.shutdown_grace;
        let result = tokio::select! {
            result = server => result.map_err(StartupError::from),
            _ = async {
                if drain_rx.await.is_ok() {
                    tokio::time::sleep(grace).await;
                } else {
                    std::future::pending::<()>().await;
                }
            } => {
                tracing::warn!(grace = ?grace, "grace period over; dropping unfinished calls");
                Ok(())
            }
        };
        probe_task.abort();
        if let Some(task) = metrics_task {
            task.abort();
        }
        tracing::info!("stopped");
        result
    }
}
