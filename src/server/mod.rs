//! The gRPC listener: our own accept loop over hyper's HTTP/2 server, so
//! that what a careless or hostile peer can hold is bounded.
//!
//! * a connection must send the HTTP/2 preface within
//!   `server.handshake_timeout`, or it is closed;
//! * a connection with no call for `server.idle_timeout` gets GOAWAY;
//! * at most `server.max_connections` are open; past it new ones are closed
//!   at once, logged (once a second) and counted;
//! * every call, body included, ends by its deadline ([`layer`]);
//! * on shutdown, idle connections get GOAWAY and close at once; only calls
//!   in flight are waited for, at most `server.shutdown_grace`.

mod conn;
mod layer;
mod requests;
pub mod tls;

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{net::TcpListener, sync::watch, task::JoinSet};
use tonic::service::Routes;

use crate::grpc::{Deadlines, ServerSettings};

pub use layer::unary_paths;

/// What every connection of one listener shares.
pub(crate) struct Limits {
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub deadlines: Deadlines,
    /// Paths of unary methods: their requests must carry one message.
    pub unary: Arc<std::collections::HashSet<String>>,
    /// `server.compress_streams`: else streams are sent plain.
    pub compress_streams: bool,
    pub auth: Arc<crate::auth::Auth>,
    pub tls: Option<Arc<tls::Tls>>,
}

/// Raises the soft limit of open files to the hard one (containers often
/// start at 1024) and answers the limit now in force.
pub fn raise_open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    Some(limit.rlim_cur)
}

/// What the listener checks besides HTTP/2: who calls, and TLS.
pub struct Security {
    pub auth: Arc<crate::auth::Auth>,
    pub tls: Option<Arc<tls::Tls>>,
}

/// Serves `routes` on `listener` until `shutdown` completes, then drains.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    settings: &ServerSettings,
    deadlines: Deadlines,
    unary: std::collections::HashSet<String>,
    security: Security,
    shutdown: impl Future<Output = ()>,
) {
    let limits = Arc::new(Limits {
        handshake_timeout: settings.handshake_timeout,
        idle_timeout: settings.idle_timeout,
        deadlines,
        unary: Arc::new(unary),
        compress_streams: settings.compress_streams,
        auth: security.auth,
        tls: security.tls,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let open = Arc::new(AtomicUsize::new(0));
    let refused_log = AtomicU64::new(0);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
            // Reap finished connection tasks as they end.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, or the like: wait, do not spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if open.load(Ordering::Relaxed) >= settings.max_connections {
            metrics::counter!(crate::metrics::CONNECTIONS_REFUSED).increment(1);
            let second = now_secs();
            if refused_log.swap(second, Ordering::Relaxed) != second {
                tracing::warn!(
                    max = settings.max_connections,
                    %peer,
                    "server.max_connections reached; closing new connections"
                );
            }
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        open.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!(crate::metrics::CONNECTIONS_OPEN).increment(1.0);
        let (routes, limits, stop, open) = (
            routes.clone(),
            limits.clone(),
            stop_rx.clone(),
            open.clone(),
        );
        connections.spawn(async move {
            conn::serve(stream, peer, routes, limits, stop).await;
            open.fetch_sub(1, Ordering::Relaxed);
            metrics::gauge!(crate::metrics::CONNECTIONS_OPEN).decrement(1.0);
        });
    }
    drop(listener);
    tracing::info!(
        connections = connections.len(),
        "shutting down: no new connections; idle ones close now, calls in flight may finish"
    );
    let _ = stop_tx.send(true);
    let grace = settings.shutdown_grace;
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(grace = ?grace, "grace period over; dropping unfinished calls");
        connections.abort_all();
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
