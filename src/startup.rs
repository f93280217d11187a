//! Builds the [`Application`]: binds the listener (port 0 picks a free one,
//! as tests do), chooses the backend, registers every service of the list
//! (`services/mod.rs`) beside health and reflection, and serves until a
//! shutdown signal, then drains in-flight calls for at most
//! `server.shutdown_grace`.

use std::{future::Future, net::SocketAddr, sync::Arc};

use tokio::{net::TcpListener, sync::watch};
use tonic::service::RoutesBuilder;

use crate::{
    audit::AuditLog,
    auth::{self, Auth},
    config::Settings,
    grpc::{Deadlines, Shared},
    health::Probe,
    proto,
    registry::{Limits, RegisterError, Registrar},
    server::tls::Tls,
    store::{Backend, memory::Memory, redis::Redis},
};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("`server.addr`: cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Redis(#[from] crate::store::StoreError),
    #[error("{0}")]
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
    #[error("`keys.namespace`: {0}")]
    Namespace(String),
    #[error("{0}")]
    Register(#[from] RegisterError),
    #[error("`auth`: {0}")]
    Auth(String),
    #[error("`server.tls`: {0}")]
    Tls(String),
}

pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    /// The `/metrics` listener, unless `metrics.enabled` is false.
    metrics: Option<(TcpListener, SocketAddr)>,
    settings: Settings,
    backend: Backend,
}

impl Application {
    /// Binds and builds everything; nothing is served until
    /// [`Application::run_until_stopped`].
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        settings.validate()?;
        // rustls needs one process-wide crypto provider for `rediss://`; a
        // second install (another app in this process) is refused, harmlessly.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let backend = match &settings.redis.url {
            None => Backend::Memory(Memory::new()),
            Some(_) => Backend::Redis(Arc::new(Redis::connect(&settings.redis)?)),
        };
        Self::build_with_backend(settings, backend).await
    }

    /// As [`Application::build`], on a backend made by the caller (tests).
    pub async fn build_with_backend(
        settings: Settings,
        backend: Backend,
    ) -> Result<Self, StartupError> {
        // The recorder is installed before anything records, whether or not
        // /metrics is served: the call path keeps handles to its metrics.
        if let Err(e) = crate::metrics::recorder() {
            tracing::warn!(error = %e, "metrics are not recorded");
        }

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
            backend,
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
        self.backend.kind()
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
            backend,
        } = self;
        let s = &settings.server;
        let (stop_tx, stop_rx) = watch::channel(false);
        let shared_deadlines = Deadlines {
            default: s.default_timeout,
            max: s.max_timeout,
            store: settings.redis.command_timeout,
        };
        let default_tenant = settings.keys.tenant().map_err(StartupError::Namespace)?;
        let auth = Auth::new(&settings.auth, default_tenant.clone()).map_err(StartupError::Auth)?;
        announce_auth(&auth, &settings);
        let reloader =
            auth::spawn_reloader(auth.clone(), settings.auth.reload_interval, stop_rx.clone());
        let tls = if s.tls.enabled() {
            let tls = Tls::new(&s.tls).map_err(StartupError::Tls)?;
            tls.clone().spawn_reloader(stop_rx.clone());
            Some(tls)
        } else {
            None
        };
        let audit: Arc<dyn AuditLog> =
            crate::services::audit::Sink::start(&backend, &settings.audit);
        let mut tenants = vec![default_tenant.clone()];
        let configured = settings.auth.keys.iter().map(|k| &k.tenant);
        for name in configured.chain(settings.auth.clients.iter().map(|c| &c.tenant)) {
            if let Ok(t) = crate::keys::Tenant::parse(name)
                && !tenants.contains(&t)
            {
                tenants.push(t);
            }
        }
        let shared = Shared {
            deadlines: shared_deadlines,
            tenants: tenants.into(),
            default_tenant,
            shutdown: stop_rx.clone(),
            compress_min_bytes: s.compress_min_bytes,
            audit: Some(audit),
        };

        let mut routes = RoutesBuilder::default();
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        routes.add_service(health_service);
        add_reflection(&mut routes)?;
        let limits = Limits {
            max_request_bytes: s.max_request_bytes,
            max_response_bytes: s.max_response_bytes,
        };
        let mut registrar = Registrar::new(&backend, shared, limits, &mut routes);
        crate::services::register_all(&settings, &mut registrar)?;
        let served = registrar.into_served();

        let probe = Probe {
            reporter: health_reporter,
            store: backend.clone(),
            services: served,
            interval: settings.health.probe_interval,
            timeout: settings.health.probe_timeout,
        };
        let probe_task = probe.start(stop_rx.clone()).await;
        let metrics_task = match metrics {
            Some((listener, addr)) => {
                let handle = crate::metrics::recorder().map_err(StartupError::Metrics)?;
                let token = settings
                    .metrics
                    .bearer_token()
                    .map_err(StartupError::Metrics)?;
                tracing::info!(%addr, "serving Prometheus metrics at /metrics");
                let pool = backend.clone();
                let before_render = Arc::new(move || {
                    if let Some(p) = pool.pool_status() {
                        crate::metrics::record_pool(p.size, p.in_use, p.waiting);
                    }
                });
                Some(tokio::spawn(crate::metrics::serve(
                    listener,
                    handle,
                    before_render,
                    token,
                    stop_rx,
                )))
            }
            None => None,
        };

        let signal = async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        };

        tracing::info!(
            addr = %local_addr,
            store = backend.kind(),
            tls = if tls.is_some() { "on" } else { "off" },
            version = crate::cli::VERSION,
            "datalayer serving gRPC"
        );
        crate::server::serve(
            listener,
            routes.routes().prepare(),
            s,
            shared_deadlines,
            crate::server::unary_paths(proto::FILE_DESCRIPTOR_SET),
            crate::server::Security { auth, tls },
            signal,
        )
        .await;
        probe_task.abort();
        reloader.abort();
        if let Some(task) = metrics_task {
            task.abort();
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Says at start-up who may call: loudly when anyone may.
fn announce_auth(auth: &Auth, settings: &Settings) {
    if !auth.has_credentials() && !auth.required() {
        tracing::warn!(
            "no API keys configured (auth.keys): the service is OPEN — anyone who can reach it may \
             read and change all data of tenant `{}`; configure keys and set auth.required = true",
            settings.keys.namespace
        );
    } else if !auth.required() {
        tracing::warn!(
            "auth.required is false: calls without a key act as tenant `{}` with every permission",
            settings.keys.namespace
        );
    } else {
        tracing::info!(
            keys = auth.key_count(),
            keys_file = ?settings.auth.keys_file,
            open = ?settings.auth.open,
            "API keys required"
        );
    }
    if auth.has_credentials() && !settings.server.tls.enabled() {
        tracing::warn!(
            "API keys travel in plain text: serve TLS (server.tls.cert_file) or keep the \
             service behind a TLS-terminating proxy on a private network"
        );
    }
}

/// Server reflection, v1 and v1alpha (grpcurl speaks v1alpha, newer tools
/// v1), each listing both, over every package this binary serves.
fn add_reflection(routes: &mut RoutesBuilder) -> Result<(), StartupError> {
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let v1 = reflection()
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| StartupError::Reflection(e.to_string()))?;
    let v1alpha = reflection()
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| StartupError::Reflection(e.to_string()))?;
    routes.add_service(v1);
    routes.add_service(v1alpha);
    Ok(())
}
