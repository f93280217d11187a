//! OTLP over HTTP/protobuf through the service's own reqwest client.
//!
//! The SDK's batch processor exports from a thread of its own, where an
//! async HTTP client finds no Tokio runtime; each export is therefore run
//! as a task on the runtime that was current when the exporter was made
//! (the service's), and awaited from the exporter's thread.

use opentelemetry_http::{Bytes, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};

use super::TelemetryError;

/// How long one export may take.
const EXPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug)]
struct Client {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Client {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let http = self.http.clone();
        let (parts, body) = request.into_parts();
        let sent = self.runtime.spawn(async move {
            let answer = http
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body)
                .send()
                .await?;
            let status = answer.status();
            let headers = answer.headers().clone();
            let body = answer.bytes().await?;
            Ok::<_, reqwest::Error>((status, headers, body))
        });
        let (status, headers, body) = sent.await??;
        let mut response = Response::new(body);
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        Ok(response)
    }
}

pub(super) fn exporter(
    endpoint: &str,
    ca: Option<Vec<u8>>,
) -> Result<opentelemetry_otlp::SpanExporter, TelemetryError> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
        TelemetryError::Exporter("OTLP over HTTP needs the service's runtime".to_owned())
    })?;
    // The client's TLS (rustls) needs the process's crypto provider; a
    // second install is refused, harmlessly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut http = reqwest::Client::builder()
        .timeout(EXPORT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("datalayer/", env!("CARGO_PKG_VERSION")));
    if let Some(pem) = ca {
        let cert = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| TelemetryError::Exporter(format!("the OTLP CA file: {e}")))?;
        http = http.add_root_certificate(cert);
    }
    let http = http
        .build()
        .map_err(|e| TelemetryError::Exporter(format!("the OTLP HTTP client: {e}")))?;
    opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .with_http_client(Client { http, runtime })
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))
}
