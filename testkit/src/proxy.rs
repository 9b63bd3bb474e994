//! A TCP proxy in front of a server that a test can cut and restore, to play
//! a target that goes away: cutting closes every connection it relays and
//! refuses new ones until it is restored.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct TcpProxy {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    /// Bumped by each cut; a relay ends when it changes.
    cuts: watch::Sender<u64>,
    accept: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a free loopback port and relays each connection to `target`.
    pub async fn start(target: SocketAddr) -> std::io::Result<TcpProxy> {
        Self::start_on(std::net::Ipv4Addr::LOCALHOST.into(), target).await
    }

    /// Listens on a free port of `ip` (an address other than loopback makes
    /// `target` look elsewhere to whoever connects) and relays to `target`.
    pub async fn start_on(ip: std::net::IpAddr, target: SocketAddr) -> std::io::Result<TcpProxy> {
        let listener = TcpListener::bind((ip, 0)).await?;
        let addr = listener.local_addr()?;
        let open = Arc::new(AtomicBool::new(true));
        let cuts = watch::channel(0u64).0;
        let (accepting, relays) = (open.clone(), cuts.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !accepting.load(Ordering::Acquire) {
                    continue; // dropped: the client sees its connection closed
                }
                let mut cut = relays.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Ok(TcpProxy { addr, open, cuts, accept })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many connections it relays now.
    pub fn relaying(&self) -> usize {
        // Each relay watches for cuts until it ends.
        self.cuts.receiver_count()
    }

    /// Closes every relayed connection and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, Ordering::Release);
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Relays new connections again.
    pub fn restore(&self) {
        self.open.store(true, Ordering::Release);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}
