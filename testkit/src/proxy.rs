//! A TCP proxy in front of a server that a test can cut and restore, to play
//! a target that goes away: cutting closes every connection it relays and
//! refuses new ones until it is restored. Stalling resets them instead, and
//! holds new ones open without an answer, as a target behind a dead network
//! path does: whoever connects waits for its own timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct TcpProxy {
    addr: SocketAddr,
    /// `OPEN`, `CUT` or `STALLED`.
    mode: Arc<AtomicU8>,
    /// Bumped by each cut; a relay ends when it changes.
    cuts: watch::Sender<u64>,
    /// Connections taken while stalled.
    stalled: Arc<AtomicUsize>,
    accept: tokio::task::JoinHandle<()>,
}

const OPEN: u8 = 0;
const CUT: u8 = 1;
const STALLED: u8 = 2;

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
        let mode = Arc::new(AtomicU8::new(OPEN));
        let cuts = watch::channel(0u64).0;
        let (accepting, relays) = (mode.clone(), cuts.clone());
        let stalled = Arc::new(AtomicUsize::new(0));
        let counted = stalled.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                match accepting.load(Ordering::Acquire) {
                    OPEN => {}
                    STALLED => {
                        counted.fetch_add(1, Ordering::AcqRel);
                        // Read and never answered, until the client gives up.
                        tokio::spawn(async move {
                            let _ = tokio::io::copy(&mut client, &mut tokio::io::sink()).await;
                        });
                        continue;
                    }
                    _ => continue, // dropped: the client sees its connection closed
                }
                let mut cut = relays.subscribe();
                let mode = accepting.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {
                            if mode.load(Ordering::Acquire) == STALLED {
                                let _ = client.set_zero_linger();
                                let _ = server.set_zero_linger();
                            }
                        }
                    }
                });
            }
        });
        Ok(TcpProxy { addr, mode, cuts, stalled, accept })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many connections it relays now.
    pub fn relaying(&self) -> usize {
        // Each relay watches for cuts until it ends.
        self.cuts.receiver_count()
    }

    /// How many connections it has taken and left unanswered while stalled.
    pub fn stalled(&self) -> usize {
        self.stalled.load(Ordering::Acquire)
    }

    /// Closes every relayed connection and refuses new ones.
    pub fn cut(&self) {
        self.mode.store(CUT, Ordering::Release);
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Resets every relayed connection and holds new ones open unanswered.
    pub fn stall(&self) {
        self.mode.store(STALLED, Ordering::Release);
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Relays new connections again.
    pub fn restore(&self) {
        self.mode.store(OPEN, Ordering::Release);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}
