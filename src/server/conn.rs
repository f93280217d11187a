//! One connection: the preface within the handshake timeout, HTTP/2 served
//! by hyper, GOAWAY when idle or shutting down.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::watch,
    time::Instant,
};
use tonic::service::Routes;

use super::{Limits, layer::Layered};

/// How long a closing connection with no call in flight may take to finish
/// the GOAWAY exchange before it is dropped.
const GOAWAY_PATIENCE: Duration = Duration::from_millis(500);

/// What every HTTP/2 connection starts with (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Calls in flight on a connection, and when the last one ended.
pub(super) struct Activity {
    started: Instant,
    active: AtomicUsize,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            active: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
        }
    }

    /// A call began; it ends when the guard drops (its answer is sent).
    pub(super) fn begin(self: &Arc<Self>) -> CallGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        CallGuard(self.clone())
    }

    /// How long the connection has had no call, if it has none.
    fn idle_for(&self) -> Option<Duration> {
        if self.active.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        Some(self.started.elapsed().saturating_sub(last))
    }
}

pub(super) struct CallGuard(Arc<Activity>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        let a = &self.0;
        a.last_ms
            .store(a.started.elapsed().as_millis() as u64, Ordering::Relaxed);
        a.active.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(super) async fn serve(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    routes: Routes,
    limits: Arc<Limits>,
    stop: watch::Receiver<bool>,
) {
    match &limits.tls {
        None => serve_io(stream, peer, None, routes, limits.clone(), stop).await,
        Some(tls) => {
            let accepted = tokio::select! {
                accepted = super::tls::accept(tls.acceptor(), stream, limits.handshake_timeout) => accepted,
                _ = wait_stop(stop.clone()) => return,
            };
            if let Some((stream, common_name)) = accepted {
                serve_io(stream, peer, common_name, routes, limits.clone(), stop).await;
            }
        }
    }
}

async fn wait_stop(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// Serves HTTP/2 on an accepted (and, with TLS, handshaken) stream.
async fn serve_io<S>(
    mut stream: S,
    peer: std::net::SocketAddr,
    common_name: Option<String>,
    routes: Routes,
    limits: Arc<Limits>,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut preface = [0u8; 24];
    let read = tokio::select! {
        read = tokio::time::timeout(limits.handshake_timeout, stream.read_exact(&mut preface)) => read,
        _ = stop.wait_for(|stopped| *stopped) => return,
    };
    match read {
        Ok(Ok(_)) if &preface == PREFACE => {}
        Ok(Ok(_)) => {
            metrics::counter!(crate::metrics::CONNECTIONS_DROPPED, "reason" => "not_http2")
                .increment(1);
            return;
        }
        Ok(Err(_)) => return,
        Err(_) => {
            metrics::counter!(crate::metrics::CONNECTIONS_DROPPED, "reason" => "handshake_timeout")
                .increment(1);
            return;
        }
    }
    let activity = Arc::new(Activity::new());
    let service = Layered::new(
        routes,
        limits.clone(),
        activity.clone(),
        super::layer::Peer {
            ip: Some(peer.ip()),
            common_name: common_name.map(Arc::from),
        },
    );
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let io = TokioIo::new(Prefixed {
        prefix: Some(PREFACE.to_vec()),
        at: 0,
        inner: stream,
    });
    let connection = builder.serve_connection(io, TowerToHyperService::new(service));
    tokio::pin!(connection);
    // When the connection was asked to close; a peer that does not answer
    // the GOAWAY's PING is dropped once no call of it is in flight.
    let mut closing: Option<Instant> = None;
    loop {
        let check_after = match activity.idle_for() {
            Some(idle) => limits.idle_timeout.saturating_sub(idle),
            None => limits.idle_timeout,
        }
        .max(Duration::from_millis(10));
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stop.wait_for(|stopped| *stopped), if closing.is_none() => {
                connection.as_mut().graceful_shutdown();
                closing = Some(Instant::now());
            }
            () = tokio::time::sleep(check_after), if closing.is_none() => {
                if activity.idle_for().is_some_and(|idle| idle >= limits.idle_timeout) {
                    metrics::counter!(crate::metrics::CONNECTIONS_DROPPED, "reason" => "idle")
                        .increment(1);
                    connection.as_mut().graceful_shutdown();
                    closing = Some(Instant::now());
                }
            }
            () = tokio::time::sleep(Duration::from_millis(100)), if closing.is_some() => {
                let lingering = closing.is_some_and(|at| at.elapsed() >= GOAWAY_PATIENCE);
                if lingering && activity.idle_for().is_some() {
                    return;
                }
            }
        }
    }
}

/// A stream that first replays the bytes already read from it.
struct Prefixed<S> {
    prefix: Option<Vec<u8>>,
    at: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(prefix) = &this.prefix {
            let rest = &prefix[this.at..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.at += n;
            if this.at == prefix.len() {
                this.prefix = None;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
