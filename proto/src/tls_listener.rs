//! Accepting TLS connections for Airlock's own servers (the REST API, the
//! gRPC APIs). Connections are accepted in one task and each handshake runs
//! in a task of its own, bounded in time, in number and in number per client
//! address, so that clients stalling their handshakes hold up no one else's
//! unless they come from the same address; finished handshakes come out of
//! [`TlsIncoming`], for `axum::serve` or tonic's `serve_with_incoming`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a client may take over its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes under way at once; a connection beyond it is closed at once.
const MAX_HANDSHAKES: usize = 4096;
/// Handshakes under way at once from one address; likewise.
const MAX_HANDSHAKES_PER_ADDRESS: usize = 32;
/// At most one warning about closed connections in this time.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Connections whose TLS handshake finished, with their peers' addresses.
pub struct TlsIncoming {
    established: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_addr: SocketAddr,
}

impl TlsIncoming {
    /// Accepts on `tcp` until `cancel`, handshaking with `config`. `what`
    /// names the server in logs ("the REST API").
    pub fn new(
        what: &'static str,
        tcp: TcpListener,
        config: Arc<rustls::ServerConfig>,
        cancel: CancellationToken,
        tracker: &TaskTracker,
    ) -> std::io::Result<Self> {
        let local_addr = tcp.local_addr()?;
        let (tx, established) = mpsc::channel(64);
        tracker.spawn(accept(what, tcp, TlsAcceptor::from(config), tx, cancel));
        Ok(Self { established, local_addr })
    }

    /// The next connection whose handshake finished; `None` once accepting
    /// stopped (the server is shutting down).
    pub async fn next(&mut self) -> Option<(TlsStream<TcpStream>, SocketAddr)> {
        self.established.recv().await
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The connections as a stream, as tonic's `serve_with_incoming` takes them.
    pub fn into_stream(self) -> impl futures::Stream<Item = std::io::Result<TlsStream<TcpStream>>> {
        futures::stream::unfold(self, |mut incoming| async move {
            incoming.next().await.map(|(tls, _)| (Ok(tls), incoming))
        })
    }
}

/// Handshakes under way per client address.
#[derive(Default)]
struct PerAddress(Mutex<HashMap<IpAddr, usize>>);

impl PerAddress {
    /// Counts one more from `ip`, unless it has its share already.
    fn enter(self: &Arc<Self>, ip: IpAddr) -> Option<Entered> {
        let mut counts = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = counts.entry(ip).or_default();
        if *count >= MAX_HANDSHAKES_PER_ADDRESS {
            return None;
        }
        *count += 1;
        Some(Entered(self.clone(), ip))
    }
}

/// One handshake counted against its address until dropped.
struct Entered(Arc<PerAddress>, IpAddr);

impl Drop for Entered {
    fn drop(&mut self) {
        let mut counts = self.0.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.1) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.1);
            }
        }
    }
}

async fn accept(
    what: &'static str,
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    established: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    cancel: CancellationToken,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let per_address = Arc::new(PerAddress::default());
    let mut warned: Option<Instant> = None;
    loop {
        let (stream, peer) = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = tcp.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset) => continue,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("{what} failed to accept a client: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let admitted = handshakes.clone().try_acquire_owned().ok().zip(per_address.enter(peer.ip()));
        let Some((permit, entered)) = admitted else {
            // Closed, so that accepting goes on for everyone else.
            if warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                warned = Some(Instant::now());
                tracing::warn!(
                    %peer,
                    "{what} is closing connections: too many TLS handshakes under way (this one's address has \
                     {MAX_HANDSHAKES_PER_ADDRESS} at most, all addresses {MAX_HANDSHAKES})"
                );
            }
            continue;
        };
        let (acceptor, established) = (acceptor.clone(), established.clone());
        tokio::spawn(async move {
            let _counted = (permit, entered);
            let _ = stream.set_nodelay(true);
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = established.send((tls, peer)).await;
                }
                // Closed before a ClientHello: a TCP health check or a port scan.
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    tracing::debug!(%peer, "a client of {what} closed before its TLS handshake: {e}");
                }
                Ok(Err(e)) => tracing::info!(%peer, "a TLS handshake with {what} failed: {e}"),
                Err(_) => tracing::info!(%peer, "a client of {what} did not finish its TLS handshake in time"),
            }
        });
    }
}
