//! Logs through `tracing` (text or JSON), and traces over OTLP/gRPC when an
//! endpoint is configured (`telemetry.otlp_endpoint`, else
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`):
//! `http://` in the clear, `https://` over TLS (the web's roots, or the CA
//! of `telemetry.otlp_ca_file` / `OTEL_EXPORTER_OTLP_CERTIFICATE`). Incoming
//! W3C `traceparent` headers are continued (see [`crate::grpc::serve`]).

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

crate::setting_enum! {
    /// How log lines are written.
    pub enum LogFormat {
        /// Human-readable lines.
        Text = "text",
        /// One JSON object per line.
        Json = "json",
    }
    default = Text;
}

crate::section! {
    /// Logs and traces.
    pub struct TelemetrySettings {
        /// `text` (human-readable) or `json`.
        pub log_format: LogFormat = LogFormat::Text;
        /// An `EnvFilter` directive, e.g. `info` or `datalayer=debug`;
        /// `RUST_LOG` overrides it.
        pub log_level: String = "info".to_owned();
        /// OTLP/gRPC endpoint for traces, e.g. `http://otel-collector:4317`.
        /// Falls back to `OTEL_EXPORTER_OTLP_ENDPOINT`; unset: no traces
        /// are exported.
        pub otlp_endpoint: Option<String> = None;
        /// PEM CA that signs an `https://` endpoint's certificate (a private
        /// CA); unset: `OTEL_EXPORTER_OTLP_CERTIFICATE`, else the web's roots.
        pub otlp_ca_file: Option<std::path::PathBuf> = None;
        /// `service.name` resource attribute of exported spans.
        pub service_name: String = "datalayer".to_owned();
    }
    check = TelemetrySettings::rules;
}

impl TelemetrySettings {
    fn rules(&self, path: &str, problems: &mut crate::settings::Problems) {
        if self.log_level.trim().is_empty() {
            problems.push(
                crate::settings::join(path, "log_level"),
                "must not be empty",
            );
        }
        if self.service_name.trim().is_empty() {
            problems.push(
                crate::settings::join(path, "service_name"),
                "must not be empty",
            );
        }
    }
}

/// Flushes and stops the trace exporter when dropped; keep it alive for the
/// life of the process.
#[must_use = "dropping the guard stops trace export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Exports every finished span now.
    pub fn flush(&self) {
        if let Some(provider) = &self.provider
            && let Err(e) = provider.force_flush()
        {
            eprintln!("datalayer: flushing traces failed: {e}");
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("datalayer: stopping the trace exporter failed: {e}");
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("`telemetry.log_level`: {0}")]
    Filter(String),
    #[error("`telemetry.otlp_endpoint`: {0}")]
    Exporter(String),
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The endpoint traces go to, if any.
pub fn otlp_endpoint(settings: &TelemetrySettings) -> Option<String> {
    settings
        .otlp_endpoint
        .clone()
        .filter(|e| !e.trim().is_empty())
        .or_else(|| env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"))
}

/// The trace exporter the settings ask for (`None`: no endpoint), checked:
/// only OTLP over gRPC is built in, so another `OTEL_EXPORTER_OTLP_*PROTOCOL`
/// is refused rather than ignored.
pub fn exporter(
    settings: &TelemetrySettings,
) -> Result<Option<(opentelemetry_otlp::SpanExporter, String)>, TelemetryError> {
    let Some(endpoint) = otlp_endpoint(settings) else {
        return Ok(None);
    };
    for var in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(p) = env(var)
            && p != "grpc"
        {
            return Err(TelemetryError::Exporter(format!(
                "{var}={p}: only `grpc` (OTLP over gRPC, e.g. http://collector:4317 or https://…) is supported"
            )));
        }
    }
    let ca = settings
        .otlp_ca_file
        .clone()
        .or_else(|| env("OTEL_EXPORTER_OTLP_CERTIFICATE").map(Into::into));
    let mut builder = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.clone());
    let mut how = if endpoint.starts_with("https://") {
        "over TLS (the web's roots)".to_owned()
    } else {
        "in the clear".to_owned()
    };
    if let Some(path) = ca {
        use opentelemetry_otlp::WithTonicConfig;
        let pem = std::fs::read(&path).map_err(|e| {
            TelemetryError::Exporter(format!("the OTLP CA file {}: {e}", path.display()))
        })?;
        builder = builder.with_tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
        );
        how = format!("over TLS (CA {})", path.display());
    }
    let exporter = builder
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    Ok(Some((exporter, format!("{endpoint} (OTLP/gRPC {how})"))))
}

/// Installs the global subscriber, propagator and (optionally) exporter.
pub fn init(settings: &TelemetrySettings) -> Result<TelemetryGuard, TelemetryError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.is_empty() => EnvFilter::try_new(directives),
        _ => EnvFilter::try_new(&settings.log_level),
    }
    .map_err(|e| TelemetryError::Filter(e.to_string()))?;

    let fmt = match settings.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            // Colours only for a person at a terminal, not in log files.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(std::io::stderr)
            .boxed(),
    };

    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let exported = exporter(settings)?;
    let destination = exported.as_ref().map(|(_, to)| to.clone());
    let (otel, provider) = match exported {
        None => (None, None),
        Some((exporter, _)) => {
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(
                    Resource::builder()
                        .with_service_name(settings.service_name.clone())
                        .build(),
                )
                .build();
            let tracer = provider.tracer("datalayer");
            opentelemetry::global::set_tracer_provider(provider.clone());
            // Spans are exported whatever the log level: only our own
            // targets, at INFO (the RPC and Redis spans).
            let targets = tracing_subscriber::filter::Targets::new()
                .with_target("datalayer", tracing::Level::INFO);
            (
                Some(
                    tracing_opentelemetry::layer()
                        .with_tracer(tracer)
                        .with_filter(targets),
                ),
                Some(provider),
            )
        }
    };

    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    match destination {
        Some(to) => tracing::info!(to = %to, "traces are exported"),
        None => tracing::info!(
            "traces are not exported (set telemetry.otlp_endpoint or OTEL_EXPORTER_OTLP_ENDPOINT)"
        ),
    }
    Ok(TelemetryGuard { provider })
}
