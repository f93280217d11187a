//! The subcommands besides serving: `check-config`, `print-config`,
//! `health` and `keys new`. Each answers an exit code for scripts.

use std::{path::Path, process::ExitCode, time::Duration};

use crate::config::Settings;

/// `--version`: the package version and the commit it was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("DATALAYER_COMMIT"),
    ")"
);

/// Loads and validates the configuration; prints every problem.
pub fn check_config(file: Option<&Path>) -> ExitCode {
    match Settings::load(file) {
        Ok(settings) => {
            // The key file is read at start-up too: check it the same way.
            let checked = settings
                .keys
                .tenant()
                .and_then(|tenant| crate::auth::Auth::new(&settings.auth, tenant).map(|_| ()));
            if let Err(e) = checked {
                eprintln!("datalayer: `auth`: {e}");
                return ExitCode::from(2);
            }
            println!(
                "configuration is valid ({} store, {} services)",
                if settings.redis.url.is_some() {
                    "Redis"
                } else {
                    "memory"
                },
                crate::services::names().len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("datalayer: {e}");
            ExitCode::from(2)
        }
    }
}

/// Prints the effective settings as JSON, secrets redacted.
pub fn print_config(file: Option<&Path>) -> ExitCode {
    match Settings::load(file) {
        Ok(settings) => match serde_json::to_string_pretty(&settings.effective()) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("datalayer: cannot print the configuration: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("datalayer: {e}");
            ExitCode::from(2)
        }
    }
}

/// What a health check answered.
#[derive(Debug, PartialEq, Eq)]
pub enum HealthAnswer {
    Serving,
    NotServing(String),
    Unreachable(String),
}

/// How `datalayer health` speaks TLS to an `https://` address.
#[derive(Debug, Clone, Default)]
pub struct HealthTls {
    /// PEM CA that signed the server's certificate; unset: the web's roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// A client certificate and key (PEM), for a server that requires mTLS.
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
    /// The name the certificate must carry; unset: the address's host
    /// (set it when probing `127.0.0.1` whose certificate names the
    /// Service).
    pub server_name: Option<String>,
}

impl HealthTls {
    fn config(&self) -> Result<tonic::transport::ClientTlsConfig, String> {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
        };
        let mut tls = ClientTlsConfig::new();
        tls = match &self.ca_file {
            Some(ca) => tls.ca_certificate(Certificate::from_pem(read(ca)?)),
            None => tls.with_webpki_roots(),
        };
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            (None, None) => {}
            _ => return Err("--cert and --key go together".to_owned()),
        }
        if let Some(name) = &self.server_name {
            tls = tls.domain_name(name.clone());
        }
        Ok(tls)
    }

    fn is_set(&self) -> bool {
        self.ca_file.is_some()
            || self.cert_file.is_some()
            || self.key_file.is_some()
            || self.server_name.is_some()
    }
}

/// Asks `grpc.health.v1.Health/Check` at `addr` (`host:port` or a URL;
/// `https://` speaks TLS as `tls` says).
pub async fn health_check(
    addr: &str,
    service: &str,
    timeout: Duration,
    tls: &HealthTls,
) -> HealthAnswer {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let url = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    let https = url.starts_with("https://");
    if tls.is_set() && !https {
        return HealthAnswer::Unreachable(format!(
            "TLS options need an https:// address, got {addr}"
        ));
    }
    let endpoint = match tonic::transport::Endpoint::from_shared(url) {
        Ok(e) => e.connect_timeout(timeout).timeout(timeout),
        Err(e) => return HealthAnswer::Unreachable(format!("bad address {addr}: {e}")),
    };
    let endpoint = if https {
        // rustls needs the process's crypto provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        match tls
            .config()
            .and_then(|c| endpoint.tls_config(c).map_err(|e| e.to_string()))
        {
            Ok(e) => e,
            Err(e) => return HealthAnswer::Unreachable(format!("TLS for {addr}: {e}")),
        }
    } else {
        endpoint
    };
    let channel = match endpoint.connect().await {
        Ok(channel) => channel,
        Err(e) => return HealthAnswer::Unreachable(format!("cannot connect to {addr}: {e}")),
    };
    let asked = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await;
    match asked {
        Ok(reply) => {
            let status = reply.into_inner().status();
            if status == tonic_health::pb::health_check_response::ServingStatus::Serving {
                HealthAnswer::Serving
            } else {
                HealthAnswer::NotServing(status.as_str_name().to_owned())
            }
        }
        Err(status) => HealthAnswer::Unreachable(format!(
            "{addr} answered {:?}: {}",
            status.code(),
            status.message()
        )),
    }
}

/// `datalayer health`: exit 0 when SERVING, 1 when not, 2 unreachable.
pub fn health(addr: &str, service: &str, timeout: Duration, tls: &HealthTls) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("datalayer: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let what = if service.is_empty() {
        "the server".to_owned()
    } else {
        service.to_owned()
    };
    match runtime.block_on(health_check(addr, service, timeout, tls)) {
        HealthAnswer::Serving => {
            println!("{what} at {addr}: SERVING");
            ExitCode::SUCCESS
        }
        HealthAnswer::NotServing(status) => {
            println!("{what} at {addr}: {status}");
            ExitCode::from(1)
        }
        HealthAnswer::Unreachable(why) => {
            eprintln!("datalayer: {why}");
            ExitCode::from(2)
        }
    }
}

/// `datalayer keys new`: a fresh API key, and what the configuration keeps
/// of it (its SHA-256, never the key).
pub fn keys_new(id: &str, tenant: &str) -> ExitCode {
    match crate::auth::keys::generate() {
        Ok((key, sha256)) => {
            println!("key (give it to the caller; it is not stored anywhere):\n  {key}\n");
            println!("configuration entry (auth.keys):");
            println!("  - {{ id: {id}, tenant: {tenant}, sha256: \"{sha256}\", allow: [\"*\"] }}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("datalayer: no randomness for a key: {e}");
            ExitCode::FAILURE
        }
    }
}
