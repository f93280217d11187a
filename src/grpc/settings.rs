//! `server.*`: the gRPC listener and the limits every call shares.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use crate::settings::{Problems, days, join, mins, ms, secs};

crate::section! {
    /// The gRPC listener and the limits every call shares.
    pub struct ServerSettings {
        /// Address the gRPC server binds. Port 0 picks a free port.
        pub addr: SocketAddr = SocketAddr::from(([0, 0, 0, 0], 50051));
        /// Deadline of a call that sends no `grpc-timeout`.
        pub default_timeout: Duration = secs(1), range(ms(1), secs(3600));
        /// Cap on any call's deadline, whatever the caller asks for; at
        /// least `server.default_timeout`.
        pub max_timeout: Duration = secs(30), range(ms(1), secs(3600));
        /// On SIGTERM, time in-flight calls get to finish; keep it below
        /// Kubernetes' terminationGracePeriodSeconds.
        pub shutdown_grace: Duration = secs(10), range(ms(0), secs(3600));
        /// Largest request message, in bytes.
        pub max_request_bytes: usize = 4 * 1024 * 1024, range(1024, 256 * 1024 * 1024);
        /// Largest response message, in bytes.
        pub max_response_bytes: usize = 4 * 1024 * 1024, range(1024, 256 * 1024 * 1024);
        /// Answers smaller than this many bytes are sent uncompressed even
        /// to callers that accept gzip (compressing small answers costs CPU
        /// and makes them larger).
        pub compress_min_bytes: usize = 1024, range(0, 256 * 1024 * 1024);
        /// Gzip the messages of streaming calls (`Consume`, `Subscribe`,
        /// `Watch`…) for callers that accept it. Off by default: a stream
        /// is compressed whole or not at all, and most of its messages are
        /// small, so each would cost a deflate here and an inflate in the
        /// client.
        pub compress_streams: bool = false;
        /// Async runtime threads; 0 means one per CPU core. 1 runs a
        /// single-threaded runtime, which hands no work between threads:
        /// the least CPU per call, for a replica given one core (or sharing
        /// two with Redis, as in docs/benchmark.md).
        pub worker_threads: usize = 0, range(0, 1024);
        /// A connection must send the HTTP/2 preface within this time, or
        /// it is closed.
        pub handshake_timeout: Duration = secs(5), range(ms(10), secs(600));
        /// A connection with no call for this long gets GOAWAY and closes.
        pub idle_timeout: Duration = mins(5), range(secs(1), days(1));
        /// Most connections open at once; new ones past it are closed at
        /// once (logged, and counted in datalayer_connections_refused_total).
        /// At start-up the soft open-file limit is raised to the hard one.
        pub max_connections: usize = 10_000, range(1, 1_000_000);
        /// TLS (and mTLS) on the gRPC listener.
        pub tls: TlsSettings = TlsSettings::default();
    }
    check = ServerSettings::rules;
}

impl ServerSettings {
    fn rules(&self, path: &str, problems: &mut Problems) {
        if self.max_timeout < self.default_timeout {
            problems.push(
                join(path, "max_timeout"),
                "must be at least server.default_timeout",
            );
        }
    }
}

crate::section! {
    /// TLS on the gRPC listener: set `cert_file` and `key_file` to serve
    /// TLS only.
    pub struct TlsSettings {
        /// PEM certificate chain of the server.
        pub cert_file: Option<PathBuf> = None;
        /// PEM private key of the server.
        pub key_file: Option<PathBuf> = None;
        /// PEM CA whose client certificates are verified (mTLS); a verified
        /// certificate's common name can act as a tenant (`auth.clients`).
        pub client_ca_file: Option<PathBuf> = None;
        /// Refuse connections without a verified client certificate (with
        /// `client_ca_file`); false: a client certificate is optional.
        pub require_client_cert: bool = false;
        /// How often the files are checked for changes.
        pub reload_interval: Duration = secs(10), range(secs(1), secs(3600));
    }
    check = TlsSettings::rules;
}

impl TlsSettings {
    fn rules(&self, path: &str, problems: &mut Problems) {
        if self.cert_file.is_some() != self.key_file.is_some() {
            problems.push(
                join(path, "key_file"),
                "server.tls.cert_file and server.tls.key_file go together",
            );
        }
        if self.client_ca_file.is_some() && self.cert_file.is_none() {
            problems.push(
                join(path, "client_ca_file"),
                "needs server.tls.cert_file and key_file (mTLS is TLS first)",
            );
        }
        if self.require_client_cert && self.client_ca_file.is_none() {
            problems.push(
                join(path, "require_client_cert"),
                "needs server.tls.client_ca_file to verify client certificates against",
            );
        }
    }

    pub fn enabled(&self) -> bool {
        self.cert_file.is_some()
    }
}
