//! TLS on the gRPC listener with certificates made here (rcgen): TLS
//! only, mTLS where a client certificate's common name acts as a tenant,
//! a required client certificate, and a certificate rotated in place
//! without a restart.

use std::path::Path;
use std::time::{Duration, Instant};

use datalayer::auth::settings::ClientSpec;
use datalayer::proto::datalayer::cache::v1::{
    GetRequest, SetRequest, cache_service_client::CacheServiceClient,
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::harness::{Backend, TestApp, pb_duration, spawn_app_with, unique_namespace};

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self { cert, key }
    }

    /// A leaf certificate (PEM cert, PEM key) for `names`, with `cn`.
    fn issue(&self, cn: &str, names: &[&str]) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A TLS channel to `app` trusting `ca`, with an optional client identity.
async fn connect(
    app: &TestApp,
    ca: &str,
    identity: Option<(&str, &str)>,
) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://127.0.0.1:{}", app.addr.port()))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

async fn healthy(channel: Channel) -> Result<(), tonic::Status> {
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map(|_| ())
}

/// With server.tls set the listener speaks TLS only: a TLS client that
/// trusts the CA gets answers; a plaintext client does not.
#[tokio::test]
async fn tls_serves_and_plaintext_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test-ca");
    let (cert, key) = ca.issue("localhost", &["localhost"]);
    let (cert_file, key_file) = (
        write(dir.path(), "tls.crt", &cert),
        write(dir.path(), "tls.key", &key),
    );
    let app = spawn_app_with(Backend::Memory, |s| {
        s.server.tls.cert_file = Some(cert_file);
        s.server.tls.key_file = Some(key_file);
    })
    .await;
    let channel = connect(&app, &ca.pem(), None).await.expect("TLS connects");
    healthy(channel).await.expect("answers over TLS");
    let plain = Channel::from_shared(format!("http://127.0.0.1:{}", app.addr.port()))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2))
        .connect()
        .await;
    if let Ok(plain) = plain {
        assert!(
            healthy(plain).await.is_err(),
            "plaintext must not be served"
        );
    }
    let other_ca = Ca::new("other");
    assert!(
        match connect(&app, &other_ca.pem(), None).await {
            Err(_) => true,
            Ok(channel) => healthy(channel).await.is_err(),
        },
        "a client that does not trust the server's CA fails"
    );
}

/// mTLS: a verified client certificate whose common name is configured
/// acts as its tenant (no API key); without one, a call needs a key.
#[tokio::test]
async fn client_certificates_act_as_tenants() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test-ca");
    let (cert, key) = ca.issue("localhost", &["localhost"]);
    let (bot_cert, bot_key) = ca.issue("bot-a", &[]);
    let tenant = unique_namespace("mtls");
    let (cert_file, key_file, ca_file) = (
        write(dir.path(), "tls.crt", &cert),
        write(dir.path(), "tls.key", &key),
        write(dir.path(), "ca.crt", &ca.pem()),
    );
    let client_tenant = tenant.clone();
    let app = spawn_app_with(Backend::Redis, |s| {
        s.server.tls.cert_file = Some(cert_file);
        s.server.tls.key_file = Some(key_file);
        s.server.tls.client_ca_file = Some(ca_file);
        s.auth.required = true;
        s.auth.clients = vec![ClientSpec {
            common_name: "bot-a".into(),
            tenant: client_tenant,
            allow: vec!["datalayer.cache.v1.CacheService/*".into()],
        }];
    })
    .await;
    let with_cert = connect(&app, &ca.pem(), Some((&bot_cert, &bot_key)))
        .await
        .unwrap();
    let mut cache = CacheServiceClient::new(with_cert);
    cache
        .set(SetRequest {
            key: "k".into(),
            value: b"v".to_vec(),
            ttl: Some(pb_duration(Duration::from_secs(60))),
            ..Default::default()
        })
        .await
        .expect("the certificate's tenant may write the cache");
    let keys = app.redis().keys(&format!("dl:{tenant}:*"));
    assert!(
        !keys.is_empty(),
        "the write landed in the certificate's tenant"
    );

    let without = connect(&app, &ca.pem(), None).await.unwrap();
    let refused = CacheServiceClient::new(without)
        .get(GetRequest { key: "k".into() })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
}

/// With require_client_cert, a client without a certificate cannot even
/// finish the handshake.
#[tokio::test]
async fn a_required_client_certificate_is_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test-ca");
    let (cert, key) = ca.issue("localhost", &["localhost"]);
    let (bot_cert, bot_key) = ca.issue("bot-b", &[]);
    let (cert_file, key_file, ca_file) = (
        write(dir.path(), "tls.crt", &cert),
        write(dir.path(), "tls.key", &key),
        write(dir.path(), "ca.crt", &ca.pem()),
    );
    let app = spawn_app_with(Backend::Memory, |s| {
        s.server.tls.cert_file = Some(cert_file);
        s.server.tls.key_file = Some(key_file);
        s.server.tls.client_ca_file = Some(ca_file);
        s.server.tls.require_client_cert = true;
    })
    .await;
    let without = match connect(&app, &ca.pem(), None).await {
        Err(_) => Err(()),
        Ok(channel) => healthy(channel).await.map_err(|_| ()),
    };
    assert!(without.is_err(), "no certificate, no connection");
    let with = connect(&app, &ca.pem(), Some((&bot_cert, &bot_key)))
        .await
        .unwrap();
    healthy(with)
        .await
        .expect("a verified certificate is served");
}

/// Rotating the certificate files in place (as cert-manager does) is
/// picked up within server.tls.reload_interval, without a restart.
#[tokio::test]
async fn a_rotated_certificate_is_served_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (old_ca, new_ca) = (Ca::new("old-ca"), Ca::new("new-ca"));
    let (cert, key) = old_ca.issue("localhost", &["localhost"]);
    let (cert_file, key_file) = (
        write(dir.path(), "tls.crt", &cert),
        write(dir.path(), "tls.key", &key),
    );
    let (cf, kf) = (cert_file.clone(), key_file.clone());
    let app = spawn_app_with(Backend::Memory, |s| {
        s.server.tls.cert_file = Some(cf);
        s.server.tls.key_file = Some(kf);
        s.server.tls.reload_interval = Duration::from_secs(1);
    })
    .await;
    healthy(connect(&app, &old_ca.pem(), None).await.unwrap())
        .await
        .unwrap();
    let (cert, key) = new_ca.issue("localhost", &["localhost"]);
    std::fs::write(&key_file, key).unwrap();
    std::fs::write(&cert_file, cert).unwrap();
    let started = Instant::now();
    loop {
        if let Ok(channel) = connect(&app, &new_ca.pem(), None).await
            && healthy(channel).await.is_ok()
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the new certificate is never served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `datalayer health` over TLS (what a container probe on a TLS port
/// runs): `--ca-file` and `--server-name` verify the server, `--cert` and
/// `--key` answer a required client certificate; a wrong CA or name, or a
/// missing certificate, is exit code 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datalayer_health_speaks_tls_and_mtls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test-ca");
    let (cert, key) = ca.issue("datalayer", &["datalayer.bots.svc"]);
    let (probe_cert, probe_key) = ca.issue("probe", &[]);
    let other = Ca::new("other");
    let p = |name: &str, text: &str| write(dir.path(), name, text);
    let (cert_file, key_file, ca_file) = (
        p("tls.crt", &cert),
        p("tls.key", &key),
        p("ca.crt", &ca.pem()),
    );
    let (probe_cert, probe_key, other_ca) = (
        p("probe.crt", &probe_cert),
        p("probe.key", &probe_key),
        p("other.crt", &other.pem()),
    );
    let app = spawn_app_with(Backend::Memory, |s| {
        s.server.tls.cert_file = Some(cert_file);
        s.server.tls.key_file = Some(key_file);
        s.server.tls.client_ca_file = Some(ca_file.clone());
        s.server.tls.require_client_cert = true;
    })
    .await;
    let addr = format!("https://127.0.0.1:{}", app.addr.port());
    let health = move |extra: Vec<String>| {
        let addr = addr.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let out = std::process::Command::new(env!("CARGO_BIN_EXE_datalayer"))
                    .args(["health", "--addr", &addr, "--timeout", "5s"])
                    .args(&extra)
                    .output()
                    .expect("the binary runs");
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                (out.status.code(), text)
            })
            .await
            .unwrap()
        }
    };
    let s = |p: &std::path::Path| p.display().to_string();
    let args = |ca: &std::path::Path, name: &str, client: bool| {
        let mut a = vec![
            "--ca-file".to_owned(),
            s(ca),
            "--server-name".to_owned(),
            name.to_owned(),
        ];
        if client {
            a.extend([
                "--cert".to_owned(),
                s(&probe_cert),
                "--key".to_owned(),
                s(&probe_key),
            ]);
        }
        a
    };
    let (code, text) = health(args(&ca_file, "datalayer.bots.svc", true)).await;
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("SERVING"), "{text}");
    for (what, extra) in [
        (
            "no client certificate",
            args(&ca_file, "datalayer.bots.svc", false),
        ),
        ("another CA", args(&other_ca, "datalayer.bots.svc", true)),
        ("another name", args(&ca_file, "elsewhere.svc", true)),
    ] {
        let (code, text) = health(extra).await;
        assert_eq!(code, Some(2), "{what}: {text}");
    }
    // TLS options on a plaintext address are a mistake, said so.
    let plain = tokio::task::spawn_blocking(|| {
        std::process::Command::new(env!("CARGO_BIN_EXE_datalayer"))
            .args(["health", "--addr", "127.0.0.1:1", "--server-name", "x"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(plain.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&plain.stderr).contains("https://"));
}
