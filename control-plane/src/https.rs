//! The REST API over TLS: the connections `airlock_proto::tls_listener`
//! accepted and handshook, as `axum::serve` takes them.

use std::net::SocketAddr;

use airlock_proto::tls_listener::TlsIncoming;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// Connections whose TLS handshake finished.
pub(crate) struct TlsListener(pub(crate) TlsIncoming);

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.0.next().await {
            Some(established) => established,
            // Accepting stopped: shutting down, which ends the server.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.0.local_addr())
    }
}
