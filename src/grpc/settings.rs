//! `server.*`: the gRPC listener and the limits every call shares.

use std::{net::SocketAddr, time::Duration};

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
        /// Async runtime threads; 0 means one per CPU core.
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
