//! A TCP proxy in front of a server that a test can cut and restore, to play
//! a target that goes away: cutting closes every connection it relays and
//! refuses new ones until it is restored. Stalling resets them instead, and
//! holds new ones open without an answer, as a target behind a dead network
//! path does: whoever connects waits for its own timeout. Pausing holds what
//! each side sends, on every connection, until it is resumed, as a slow
//! network or a busy server does: nothing is lost.

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
    /// Whether relayed bytes are held back.
    paused: watch::Sender<bool>,
    /// Reads whose bytes were held back by a pause.
    held: Arc<AtomicUsize>,
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
        let paused = watch::channel(false).0;
        let (pauses, held) = (paused.clone(), Arc::new(AtomicUsize::new(0)));
        let holding = held.clone();
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
                let (paused, held) = (pauses.subscribe(), holding.clone());
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else { return };
                    // The same sockets, to reset them on a stall while the halves relay.
                    let sockets =
                        [socket2::SockRef::from(&client).try_clone(), socket2::SockRef::from(&server).try_clone()];
                    // Borrowed halves: dropping one shuts nothing down, so a
                    // stall's reset is the first thing either side sees.
                    let (from_client, to_client) = client.split();
                    let (from_server, to_server) = server.split();
                    let relay = async {
                        tokio::join!(
                            pipe(from_client, to_server, paused.clone(), &held),
                            pipe(from_server, to_client, paused, &held),
                        )
                    };
                    tokio::pin!(relay);
                    tokio::select! {
                        _ = &mut relay => {}
                        _ = cut.changed() => {
                            if mode.load(Ordering::Acquire) == STALLED {
                                for socket in sockets.iter().flatten() {
                                    let _ = socket.set_linger(Some(std::time::Duration::ZERO));
                                }
                            }
                        }
                    }
                });
            }
        });
        Ok(TcpProxy { addr, mode, cuts, stalled, paused, held, accept })
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

    /// Holds back what either side of any connection sends from now on.
    pub fn pause(&self) {
        self.paused.send_replace(true);
    }

    /// Passes on what was held back, and whatever comes after it.
    pub fn resume(&self) {
        self.paused.send_replace(false);
    }

    /// How many reads (of either side) a pause has held back so far.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

/// Copies `from` to `to` until `from` ends, then shuts `to` down for writing
/// (as `copy_bidirectional` does); while paused, what was read waits.
async fn pipe(
    mut from: tokio::net::tcp::ReadHalf<'_>,
    mut to: tokio::net::tcp::WriteHalf<'_>,
    mut paused: watch::Receiver<bool>,
    held: &AtomicUsize,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if *paused.borrow_and_update() {
            held.fetch_add(1, Ordering::AcqRel);
            if paused.wait_for(|p| !*p).await.is_err() {
                return;
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
    let _ = to.shutdown().await;
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::TcpProxy;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server that answers each read with the bytes in upper case.
    async fn shouter() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n @ 1..) = s.read(&mut buf).await {
                        buf[..n].make_ascii_uppercase();
                        if s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        at
    }

    #[tokio::test]
    async fn a_pause_holds_what_is_sent_until_resumed() {
        let proxy = TcpProxy::start(shouter().await).await.unwrap();
        let mut c = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
        let mut got = [0u8; 4];
        c.write_all(b"ping").await.unwrap();
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"PING");

        proxy.pause();
        c.write_all(b"pong").await.unwrap();
        airlock_wait(|| proxy.held() == 1).await;
        let early = tokio::time::timeout(std::time::Duration::from_millis(200), c.read(&mut got)).await;
        assert!(early.is_err(), "nothing gets through while paused");
        proxy.resume();
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"PONG");
    }

    async fn airlock_wait(mut done: impl FnMut() -> bool) {
        crate::eventually(std::time::Duration::from_secs(5), "the proxy to hold a read", || {
            let now = done();
            async move { now }
        })
        .await;
    }
}
