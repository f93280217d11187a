//! `rediss://`: the store speaks TLS to Redis. A test CA and server
//! certificate are made with `openssl`; Redis serves TLS on its own port.

use std::{path::Path, process::Command, time::Duration};

use crate::harness::{Backend, RedisServer, pb_duration, spawn_app_with};
use datalayer::proto::datalayer::cache::v1::{GetRequest, SetRequest};
use datalayer::store::redis::RedisUrl;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl on PATH");
    assert!(status.success(), "openssl {args:?}");
}

/// A CA and a server certificate for 127.0.0.1, in `dir`.
fn make_certificates(dir: &Path) {
    let subject = |cn: &str| format!("/CN={cn}");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            &subject("datalayer-test-ca"),
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            &subject("127.0.0.1"),
        ],
    );
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}

/// Redis with TLS on `tls_port` (its plain port stays for the harness).
fn tls_redis(dir: &Path) -> (RedisServer, u16) {
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let path = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let redis = RedisServer::start_with(&[
        "--tls-port",
        &tls_port.to_string(),
        "--tls-cert-file",
        &path("server.crt"),
        "--tls-key-file",
        &path("server.key"),
        "--tls-ca-cert-file",
        &path("ca.crt"),
        "--tls-auth-clients",
        "no",
    ]);
    (redis, tls_port)
}

/// Over `rediss://` every call works as on plain Redis. (`#insecure` skips
/// certificate verification: the test CA is not in the public roots.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_work_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let (_redis, tls_port) = tls_redis(dir.path());
    let url = format!("rediss://127.0.0.1:{tls_port}/#insecure");
    let app = spawn_app_with(Backend::Memory, move |s| {
        s.redis.url = Some(RedisUrl::new(url));
    })
    .await;
    app.wait_for_health(ServingStatus::Serving).await;
    let mut cache = app.cache.clone();
    cache
        .set(SetRequest {
            key: "over-tls".into(),
            value: b"v".to_vec(),
            ttl: Some(pb_duration(Duration::from_secs(60))),
            ..Default::default()
        })
        .await
        .expect("set over TLS");
    let got = cache
        .get(GetRequest {
            key: "over-tls".into(),
        })
        .await
        .expect("get over TLS")
        .into_inner();
    assert!(got.found);
}

/// A private CA given as `redis.tls_ca_file` is trusted: verified TLS,
/// no `#insecure`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_ca_is_trusted_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let (_redis, tls_port) = tls_redis(dir.path());
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let ca = dir.path().join("ca.crt");
    let app = spawn_app_with(Backend::Memory, move |s| {
        s.redis.url = Some(RedisUrl::new(url));
        s.redis.tls_ca_file = Some(ca);
    })
    .await;
    app.wait_for_health(ServingStatus::Serving).await;
    let got = app
        .cache
        .clone()
        .get(GetRequest { key: "k".into() })
        .await
        .expect("get over verified TLS")
        .into_inner();
    assert!(!got.found);
}

/// Certificates are verified by default: a server whose CA is not trusted
/// is never used (health NOT_SERVING, calls UNAVAILABLE).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_certificates_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let (_redis, tls_port) = tls_redis(dir.path());
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let app = spawn_app_with(Backend::Memory, move |s| {
        s.redis.url = Some(RedisUrl::new(url));
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.health_status("").await, ServingStatus::NotServing);
    let mut request = tonic::Request::new(GetRequest { key: "k".into() });
    request.set_timeout(Duration::from_millis(800));
    let status = app
        .cache
        .clone()
        .get(request)
        .await
        .expect_err("the certificate is not trusted");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
}

/// A client certificate signed by the test CA, in `dir` (client.crt/key).
fn make_client_certificate(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "client.key",
            "-out",
            "client.csr",
            "-subj",
            "/CN=datalayer-client",
        ],
    );
    // An extension makes it X.509 v3: rustls refuses v1 certificates.
    std::fs::write(dir.join("client.cnf"), "extendedKeyUsage=clientAuth\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "client.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "client.crt",
            "-days",
            "2",
            "-extfile",
            "client.cnf",
        ],
    );
}

/// mTLS to Redis: a Redis that requires client certificates serves the
/// service that shows `redis.tls_cert_file` + `tls_key_file`, and no other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_is_shown_to_redis() {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    make_client_certificate(dir.path());
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let path = |f: &str| dir.path().join(f).to_string_lossy().into_owned();
    let _redis = RedisServer::start_with(&[
        "--tls-port",
        &tls_port.to_string(),
        "--tls-cert-file",
        &path("server.crt"),
        "--tls-key-file",
        &path("server.key"),
        "--tls-ca-cert-file",
        &path("ca.crt"),
        "--tls-auth-clients",
        "yes",
    ]);
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let (ca, cert, key) = (
        dir.path().join("ca.crt"),
        dir.path().join("client.crt"),
        dir.path().join("client.key"),
    );
    let with_cert = spawn_app_with(Backend::Memory, {
        let url = url.clone();
        let ca = ca.clone();
        move |s| {
            s.redis.url = Some(RedisUrl::new(url));
            s.redis.tls_ca_file = Some(ca);
            s.redis.tls_cert_file = Some(cert);
            s.redis.tls_key_file = Some(key);
        }
    })
    .await;
    with_cert.wait_for_health(ServingStatus::Serving).await;
    let got = with_cert
        .cache
        .clone()
        .get(GetRequest { key: "k".into() })
        .await
        .expect("get over mTLS");
    assert!(!got.into_inner().found);

    let without = spawn_app_with(Backend::Memory, move |s| {
        s.redis.url = Some(RedisUrl::new(url));
        s.redis.tls_ca_file = Some(ca);
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(without.health_status("").await, ServingStatus::NotServing);
}
