//! TLS on the gRPC listener (rustls), optionally verifying client
//! certificates against a CA (mTLS). The files are re-read every
//! `server.tls.reload_interval`: cert-manager rotates them in place, and
//! new connections get the new certificate without a restart (a file that
//! stops parsing keeps the one in force, loudly).

use std::{path::PathBuf, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use rustls::server::WebPkiClientVerifier;
use tokio::sync::watch;

use crate::grpc::settings::TlsSettings;

/// The server's TLS configuration in force, swapped when the files change.
pub struct Tls {
    settings: TlsSettings,
    config: ArcSwap<rustls::ServerConfig>,
    /// The files' contents as last loaded.
    loaded: std::sync::Mutex<Vec<Vec<u8>>>,
}

fn read(path: &Option<PathBuf>, key: &str) -> Result<Vec<u8>, String> {
    match path {
        Some(p) => std::fs::read(p).map_err(|e| format!("{key}: cannot read {}: {e}", p.display())),
        None => Ok(Vec::new()),
    }
}

impl Tls {
    /// Loads the files; an error stops start-up.
    pub fn new(settings: &TlsSettings) -> Result<Arc<Self>, String> {
        let files = Self::files(settings)?;
        let config = build(settings, &files)?;
        Ok(Arc::new(Self {
            settings: settings.clone(),
            config: ArcSwap::from_pointee(config),
            loaded: std::sync::Mutex::new(files),
        }))
    }

    fn files(settings: &TlsSettings) -> Result<Vec<Vec<u8>>, String> {
        Ok(vec![
            read(&settings.cert_file, "server.tls.cert_file")?,
            read(&settings.key_file, "server.tls.key_file")?,
            read(&settings.client_ca_file, "server.tls.client_ca_file")?,
        ])
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.load_full())
    }

    /// Re-reads the files; swaps the configuration when they changed.
    pub fn reload(&self) -> Result<bool, String> {
        let files = Self::files(&self.settings)?;
        let mut loaded = crate::store::memory::lock(&self.loaded);
        if *loaded == files {
            return Ok(false);
        }
        let config = build(&self.settings, &files)?;
        self.config.store(Arc::new(config));
        *loaded = files;
        Ok(true)
    }

    /// Checks the files every `server.tls.reload_interval` until `stop`.
    pub fn spawn_reloader(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let interval = self.settings.reload_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                match self.reload() {
                    Ok(false) => {}
                    Ok(true) => {
                        metrics::counter!(crate::metrics::TLS_RELOADS, "outcome" => "ok")
                            .increment(1);
                        tracing::info!("server TLS certificate reloaded");
                    }
                    Err(e) => {
                        metrics::counter!(crate::metrics::TLS_RELOADS, "outcome" => "error")
                            .increment(1);
                        tracing::error!(error = %e, "server TLS files cannot be loaded; the certificate in force stays");
                    }
                }
            }
        });
    }
}

fn build(settings: &TlsSettings, files: &[Vec<u8>]) -> Result<rustls::ServerConfig, String> {
    let [cert, key, ca] = files else {
        return Err("server.tls: three files expected".to_owned());
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("server.tls.cert_file: not a PEM certificate chain: {e}"))?;
    if chain.is_empty() {
        return Err("server.tls.cert_file: no certificate in it".to_owned());
    }
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|e| format!("server.tls.key_file: not a PEM private key: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("server.tls: {e}"))?;
    let builder = if settings.client_ca_file.is_some() {
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(ca) {
            let ca = ca.map_err(|e| format!("server.tls.client_ca_file: not PEM: {e}"))?;
            roots
                .add(ca)
                .map_err(|e| format!("server.tls.client_ca_file: {e}"))?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        let verifier = if settings.require_client_cert {
            verifier
        } else {
            verifier.allow_unauthenticated()
        };
        builder.with_client_cert_verifier(
            verifier
                .build()
                .map_err(|e| format!("server.tls.client_ca_file: {e}"))?,
        )
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("server.tls: the certificate and key do not go together: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The common name of a verified client certificate.
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// A TLS handshake bounded by the handshake timeout.
pub async fn accept(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
    timeout: Duration,
) -> Option<(
    tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    Option<String>,
)> {
    let tls = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            metrics::counter!(crate::metrics::CONNECTIONS_DROPPED, "reason" => "tls_handshake")
                .increment(1);
            return None;
        }
        Err(_) => {
            metrics::counter!(crate::metrics::CONNECTIONS_DROPPED, "reason" => "handshake_timeout")
                .increment(1);
            return None;
        }
    };
    let cn = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(common_name);
    Some((tls, cn))
}
