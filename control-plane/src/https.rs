//! The REST API over TLS. Connections are accepted in one task and each
//! handshake runs in a task of its own, bounded in time and in number, so a
//! client that stalls its handshake holds up no one else; finished handshakes
//! reach `axum::serve` through [`TlsListener`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a client may take over its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes under way at once; accepting waits beyond it.
const MAX_HANDSHAKES: usize = 256;

/// Connections whose TLS handshake finished, as `axum::serve` takes them.
pub(crate) struct TlsListener {
    established: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_addr: SocketAddr,
}

impl TlsListener {
    /// Accepts on `tcp` until `cancel`, handshaking with `config`.
    pub(crate) fn new(
        tcp: TcpListener,
        config: Arc<rustls::ServerConfig>,
        cancel: CancellationToken,
        tracker: &TaskTracker,
    ) -> std::io::Result<Self> {
        let local_addr = tcp.local_addr()?;
        let (tx, established) = mpsc::channel(64);
        tracker.spawn(accept(tcp, TlsAcceptor::from(config), tx, cancel));
        Ok(Self { established, local_addr })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.established.recv().await {
            Some(established) => established,
            // Accepting stopped: shutting down, which ends the server.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local_addr)
    }
}

async fn accept(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    established: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    cancel: CancellationToken,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(permit) = handshakes.clone().acquire_owned().await else { return };
        let (stream, peer) = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = tcp.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("failed to accept a REST API client: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (acceptor, established) = (acceptor.clone(), established.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let _ = stream.set_nodelay(true);
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = established.send((tls, peer)).await;
                }
                Ok(Err(e)) => tracing::info!(%peer, "a REST API client's TLS handshake failed: {e}"),
                Err(_) => tracing::info!(%peer, "a REST API client did not finish its TLS handshake in time"),
            }
        });
    }
}
