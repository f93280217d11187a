//! Spans reach a real OTLP/gRPC receiver running inside the test: one SERVER
//! span per call continuing the caller's W3C trace, with CLIENT spans for
//! Redis beneath it that never carry key contents.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::harness::{Backend, spawn_app_with};
use datalayer::{
    proto::datalayer::ratelimit::v1::{
        CheckRequest, Gcra, Limit, check_request::LimitSource, limit::Algorithm,
    },
    telemetry::{self, TelemetrySettings},
};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value::Value},
    trace::v1::{Span, span::SpanKind},
};
use tokio_stream::wrappers::TcpListenerStream;

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
    service_names: Arc<Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        for resource_spans in request.into_inner().resource_spans {
            if let Some(resource) = &resource_spans.resource
                && let Some(name) = attr(&resource.attributes, "service.name")
            {
                self.service_names.lock().unwrap().push(name);
            }
            for scope in resource_spans.scope_spans {
                self.spans.lock().unwrap().extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn attr(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref().and_then(|v: &AnyValue| v.value.as_ref()) {
            Some(Value::StringValue(s)) => Some(s.clone()),
            Some(Value::IntValue(i)) => Some(i.to_string()),
            Some(Value::BoolValue(b)) => Some(b.to_string()),
            _ => None,
        }
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_receiver_and_continue_the_callers_trace() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp_addr = listener.local_addr().unwrap();
    let server = receiver.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(server))
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .unwrap();
    });

    let guard = telemetry::init(&TelemetrySettings {
        otlp_endpoint: Some(format!("http://{otlp_addr}")),
        service_name: "datalayer-under-test".into(),
        ..TelemetrySettings::default()
    })
    .expect("telemetry starts");

    let app = spawn_app_with(Backend::Redis, |_| {}).await;
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let secret_key = "secret-user-4242";
    let check = |key: &str| {
        let mut request = tonic::Request::new(CheckRequest {
            reserve: false,
            key: key.into(),
            limit_source: Some(LimitSource::Limit(Limit {
                algorithm: Some(Algorithm::Gcra(Gcra {
                    limit: 5,
                    period: Some(prost_types::Duration {
                        seconds: 60,
                        nanos: 0,
                    }),
                })),
                fail_mode: 0,
            })),
            cost: None,
        });
        request.metadata_mut().insert(
            "traceparent",
            format!("00-{caller_trace}-{caller_span}-01")
                .parse()
                .unwrap(),
        );
        request
    };
    app.ratelimit
        .clone()
        .check(check(secret_key))
        .await
        .expect("check");
    let bad = app.ratelimit.clone().check(check("")).await;
    assert_eq!(bad.unwrap_err().code(), tonic::Code::InvalidArgument);

    // Export is batched: flush, then wait (bounded) for the receiver.
    let started = Instant::now();
    let spans = loop {
        guard.flush();
        let spans = receiver.spans.lock().unwrap().clone();
        let servers = spans
            .iter()
            .filter(|s| s.name == "datalayer.ratelimit.v1.RateLimitService/Check")
            .count();
        if servers >= 2 && spans.iter().any(|s| s.kind == SpanKind::Client as i32) {
            break spans;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "spans never arrived; got {:?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let servers: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == "datalayer.ratelimit.v1.RateLimitService/Check")
        .collect();
    for server in &servers {
        assert_eq!(server.kind, SpanKind::Server as i32);
        assert_eq!(
            hex(&server.trace_id),
            caller_trace,
            "continues the caller's trace"
        );
        assert_eq!(
            hex(&server.parent_span_id),
            caller_span,
            "child of the caller's span"
        );
        assert_eq!(
            attr(&server.attributes, "rpc.system").as_deref(),
            Some("grpc")
        );
        assert_eq!(
            attr(&server.attributes, "rpc.service").as_deref(),
            Some("datalayer.ratelimit.v1.RateLimitService")
        );
        assert_eq!(
            attr(&server.attributes, "rpc.method").as_deref(),
            Some("Check")
        );
    }
    let mut codes: Vec<String> = servers
        .iter()
        .filter_map(|s| attr(&s.attributes, "rpc.grpc.status_code"))
        .collect();
    codes.sort();
    assert_eq!(codes, vec!["0", "3"], "OK and INVALID_ARGUMENT recorded");

    // The Redis call is a CLIENT span in the same trace, under the OK call.
    let ok_server = servers
        .iter()
        .find(|s| attr(&s.attributes, "rpc.grpc.status_code").as_deref() == Some("0"))
        .unwrap();
    let client = spans
        .iter()
        .find(|s| s.kind == SpanKind::Client as i32 && s.trace_id == ok_server.trace_id)
        .expect("a CLIENT span in the caller's trace");
    assert_eq!(client.name, "EVALSHA ratelimit.gcra");
    assert_eq!(
        attr(&client.attributes, "db.system").as_deref(),
        Some("redis")
    );
    let mut ancestor = client.parent_span_id.clone();
    let mut hops = 0;
    while ancestor != ok_server.span_id {
        let parent = spans
            .iter()
            .find(|s| s.span_id == ancestor)
            .expect("the client span descends from the server span");
        ancestor = parent.parent_span_id.clone();
        hops += 1;
        assert!(hops < 5);
    }
    // No span carries the caller's key.
    for span in &spans {
        for kv in &span.attributes {
            let value = format!("{:?}", kv.value);
            assert!(!value.contains(secret_key), "{} leaks the key", span.name);
        }
    }
    assert!(
        receiver
            .service_names
            .lock()
            .unwrap()
            .iter()
            .any(|n| n == "datalayer-under-test")
    );
}

/// OTLP over TLS: `https://` with a private CA (`telemetry.otlp_ca_file`)
/// reaches a TLS receiver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_receiver_over_tls() {
    use opentelemetry::trace::{Tracer as _, TracerProvider as _};
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "otlp test ca");
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();

    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = receiver.clone();
    let identity = tonic::transport::Identity::from_pem(leaf.pem(), leaf_key.serialize_pem());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .unwrap()
            .add_service(TraceServiceServer::new(server))
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .unwrap();
    });

    let settings = TelemetrySettings {
        otlp_endpoint: Some(format!("https://localhost:{port}")),
        otlp_ca_file: Some(ca_file),
        ..TelemetrySettings::default()
    };
    let (exporter, to) = telemetry::exporter(&settings)
        .unwrap()
        .expect("an exporter");
    assert!(to.contains("over TLS (CA"), "{to}");
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_simple_exporter(exporter)
        .build();
    provider.tracer("tls-test").in_span("over-tls", |_| {});
    let started = Instant::now();
    loop {
        let _ = provider.force_flush();
        if receiver
            .spans
            .lock()
            .unwrap()
            .iter()
            .any(|s| s.name == "over-tls")
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no span arrived over TLS"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = provider.shutdown();
}

/// What the HTTP receiver got: the request path and its spans.
type Export = (String, Vec<Span>);

/// OTLP over HTTP/protobuf (`telemetry.otlp_protocol = "http/protobuf"`):
/// a base endpoint gets `/v1/traces`, and the spans reach a real HTTP
/// receiver (an HTTP/1.1 server on a socket, decoding the protobuf body).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_http_receiver() {
    use opentelemetry::trace::{Tracer as _, TracerProvider as _};
    use prost::Message;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let received: Arc<Mutex<Vec<Export>>> = Arc::default();
    let sink = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let sink = sink.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    // One request per connection is enough for the exporter.
                    let n = socket.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    if buf.len() < end + 4 + length {
                        continue;
                    }
                    let body = &buf[end + 4..end + 4 + length];
                    let request =
                        ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf body");
                    let path = head
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or_default()
                        .to_owned();
                    let spans = request
                        .resource_spans
                        .into_iter()
                        .flat_map(|r| r.scope_spans)
                        .flat_map(|s| s.spans)
                        .collect();
                    sink.lock().unwrap().push((path, spans));
                    let reply = ExportTraceServiceResponse::default().encode_to_vec();
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\n\r\n",
                        reply.len()
                    );
                    let _ = socket.write_all(head.as_bytes()).await;
                    let _ = socket.write_all(&reply).await;
                    buf.clear();
                }
            });
        }
    });

    let settings = TelemetrySettings {
        otlp_endpoint: Some(format!("http://127.0.0.1:{port}")),
        otlp_protocol: Some(telemetry::OtlpProtocol::HttpProtobuf),
        ..TelemetrySettings::default()
    };
    let (exporter, to) = telemetry::exporter(&settings)
        .unwrap()
        .expect("an exporter");
    assert!(
        to.contains("/v1/traces (OTLP/http/protobuf in the clear)"),
        "{to}"
    );
    // The batch processor exports from its own thread, as the service does.
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .build();
    provider.tracer("http-test").in_span("over-http", |_| {});
    let started = Instant::now();
    loop {
        let p = provider.clone();
        let _ = tokio::task::spawn_blocking(move || p.force_flush()).await;
        let got = received.lock().unwrap().clone();
        if let Some((path, _)) = got
            .iter()
            .find(|(_, spans)| spans.iter().any(|s| s.name == "over-http"))
        {
            assert_eq!(path, "/v1/traces");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no span arrived over HTTP"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
}
