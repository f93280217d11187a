//! Logs through `tracing` (text or JSON), and traces over OTLP when an
//! endpoint is configured (`telemetry.otlp_endpoint`, else
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`),
//! over gRPC or HTTP/protobuf (`telemetry.otlp_protocol`, else
//! `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` / `OTEL_EXPORTER_OTLP_PROTOCOL`):
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

crate::setting_enum! {
    /// How traces travel to the OTLP endpoint.
    pub enum OtlpProtocol {
        /// OTLP over gRPC (port 4317 by convention).
        Grpc = "grpc",
        /// OTLP over HTTP with protobuf bodies (port 4318, `/v1/traces`).
        HttpProtobuf = "http/protobuf",
    }
    default = Grpc;
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
        /// `grpc` or `http/protobuf`; unset: `OTEL_EXPORTER_OTLP_PROTOCOL`,
        /// else `grpc`. Over HTTP an endpoint without a path gets
        /// `/v1/traces`.
        pub otlp_protocol: Option<OtlpProtocol> = None;
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

mod http;

/// Whether spans go anywhere: without an exporter, the call path makes
/// none (they would only cost).
static EXPORTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn traces_exported() -> bool {
    EXPORTED.load(std::sync::atomic::Ordering::Relaxed)
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

/// The protocol traces go over: the setting, else the environment's.
fn protocol(settings: &TelemetrySettings) -> Result<OtlpProtocol, TelemetryError> {
    protocol_from(settings, env)
}

fn protocol_from(
    settings: &TelemetrySettings,
    env: impl Fn(&str) -> Option<String>,
) -> Result<OtlpProtocol, TelemetryError> {
    if let Some(p) = settings.otlp_protocol {
        return Ok(p);
    }
    for var in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(p) = env(var) {
            return match p.as_str() {
                "grpc" => Ok(OtlpProtocol::Grpc),
                "http/protobuf" => Ok(OtlpProtocol::HttpProtobuf),
                _ => Err(TelemetryError::Exporter(format!(
                    "{var}={p}: use `grpc` or `http/protobuf` (`http/json` is not supported)"
                ))),
            };
        }
    }
    Ok(OtlpProtocol::Grpc)
}

/// The trace exporter the settings ask for (`None`: no endpoint), and a
/// line saying where traces go.
pub fn exporter(
    settings: &TelemetrySettings,
) -> Result<Option<(opentelemetry_otlp::SpanExporter, String)>, TelemetryError> {
    let Some(endpoint) = otlp_endpoint(settings) else {
        return Ok(None);
    };
    let protocol = protocol(settings)?;
    let ca_path = settings
        .otlp_ca_file
        .clone()
        .or_else(|| env("OTEL_EXPORTER_OTLP_CERTIFICATE").map(Into::into));
    let ca = match &ca_path {
        None => None,
        Some(path) => Some(std::fs::read(path).map_err(|e| {
            TelemetryError::Exporter(format!("the OTLP CA file {}: {e}", path.display()))
        })?),
    };
    let how = match (&ca_path, endpoint.starts_with("https://")) {
        (Some(path), _) => format!("over TLS (CA {})", path.display()),
        (None, true) => "over TLS (the web's roots)".to_owned(),
        (None, false) => "in the clear".to_owned(),
    };
    let (exporter, endpoint) = match protocol {
        OtlpProtocol::Grpc => (grpc_exporter(&endpoint, ca)?, endpoint),
        OtlpProtocol::HttpProtobuf => {
            let endpoint = traces_url(&endpoint);
            (http::exporter(&endpoint, ca)?, endpoint)
        }
    };
    Ok(Some((
        exporter,
        format!("{endpoint} (OTLP/{protocol} {how})"),
    )))
}

fn grpc_exporter(
    endpoint: &str,
    ca: Option<Vec<u8>>,
) -> Result<opentelemetry_otlp::SpanExporter, TelemetryError> {
    let mut builder = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint);
    if let Some(pem) = ca {
        use opentelemetry_otlp::WithTonicConfig;
        builder = builder.with_tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
        );
    }
    builder
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))
}

/// An HTTP endpoint without a path is a base: traces go to `/v1/traces`.
fn traces_url(endpoint: &str) -> String {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    match rest.find('/') {
        Some(i) if i + 1 < rest.len() => endpoint.to_owned(),
        _ => format!("{}/v1/traces", endpoint.trim_end_matches('/')),
    }
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
    EXPORTED.store(destination.is_some(), std::sync::atomic::Ordering::Relaxed);
    match destination {
        Some(to) => tracing::info!(to = %to, "traces are exported"),
        None => tracing::info!(
            "traces are not exported (set telemetry.otlp_endpoint or OTEL_EXPORTER_OTLP_ENDPOINT)"
        ),
    }
    Ok(TelemetryGuard { provider })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_protocol_comes_from_the_setting_then_the_environment() {
        let unset = TelemetrySettings::default();
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let p = |s: &TelemetrySettings, e| protocol_from(s, e).map_err(|e| e.to_string());
        assert_eq!(p(&unset, vars(&[])), Ok(OtlpProtocol::Grpc));
        assert_eq!(
            p(
                &unset,
                vars(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")])
            ),
            Ok(OtlpProtocol::HttpProtobuf)
        );
        // The traces-specific variable wins over the general one.
        assert_eq!(
            p(
                &unset,
                vars(&[
                    ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ])
            ),
            Ok(OtlpProtocol::Grpc)
        );
        let refused = p(
            &unset,
            vars(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]),
        )
        .unwrap_err();
        assert!(refused.contains("`grpc` or `http/protobuf`"), "{refused}");
        let set = TelemetrySettings {
            otlp_protocol: Some(OtlpProtocol::HttpProtobuf),
            ..TelemetrySettings::default()
        };
        assert_eq!(
            p(&set, vars(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")])),
            Ok(OtlpProtocol::HttpProtobuf)
        );
    }

    #[test]
    fn a_base_http_endpoint_gets_the_traces_path() {
        assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            traces_url("https://c/custom/traces"),
            "https://c/custom/traces"
        );
    }
}
