//! Byte-for-byte TCP forwarders: what `pg-throughput` measures the gateway's
//! relay against when it asks how much of its CPU per transaction any relay
//! would spend (`fwd-tokio`, `fwd-mio`, `fwd-uring`). Each reads what one side sends
//! and writes it to the other, with no framing, policy or bookkeeping:
//!
//! - `tokio`: one current-thread runtime with its I/O driver, as a session
//!   thread of the gateway runs, and one task per connection relaying both
//!   ways (`copy_bidirectional`);
//! - `mio`: one thread's own epoll loop, edge-triggered, calling the relay
//!   directly on each readiness event: no tasks, wakers or run queue, which
//!   pgbouncer's libevent loop has none of either;
//! - `uring`: one thread's io_uring (`uring.rs`): a receive on each socket
//!   always outstanding, and what it brings sent on with the next receive
//!   linked behind the send, so that one `io_uring_enter` submits and reaps
//!   the work of every connection that moved since the last: fewer system
//!   calls than any readiness loop makes.
//!
//! Run as `airlock-loadtest forward --engine <tokio|mio|uring> --listen A --upstream B`
//! (a child process of the scenario; stops on SIGTERM's default action).

use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;

use anyhow::Context;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[arg(long)]
    pub engine: Engine,
    /// Where clients connect.
    #[arg(long)]
    pub listen: SocketAddr,
    /// Where each client's bytes go.
    #[arg(long)]
    pub upstream: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    Tokio,
    Mio,
    Uring,
}

/// Relays until the process is killed.
pub fn run(args: &Args) -> anyhow::Result<()> {
    match args.engine {
        Engine::Tokio => on_tokio(args.listen, args.upstream),
        Engine::Mio => on_mio(args.listen, args.upstream),
        Engine::Uring => crate::uring::run(args.listen, args.upstream, CHUNK),
    }
}

/// How much one read may bring in, as the gateway's relay reads.
const CHUNK: usize = 64 * 1024;

fn on_tokio(listen: SocketAddr, upstream: SocketAddr) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
        loop {
            let mut client = match listener.accept().await {
                Ok((client, _)) => client,
                Err(e) => {
                    eprintln!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            tokio::spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else { return };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut server, CHUNK, CHUNK).await;
            });
        }
    })
}

const LISTENER: mio::Token = mio::Token(usize::MAX);

/// A client and its upstream connection: sides 0 and 1, tokens `2 * index + side`.
struct Pair {
    sides: [mio::net::TcpStream; 2],
    /// Bytes read from side `i` that side `1 - i` has not taken yet.
    unsent: [Vec<u8>; 2],
    /// Side `i` said it closes (or failed): read it to its end whenever it is read.
    closing: [bool; 2],
}

fn on_mio(listen: SocketAddr, upstream: SocketAddr) -> anyhow::Result<()> {
    let mut poll = mio::Poll::new()?;
    let mut events = mio::Events::with_capacity(1024);
    let mut listener = mio::net::TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    poll.registry().register(&mut listener, LISTENER, mio::Interest::READABLE)?;
    let mut pairs: Vec<Option<Pair>> = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        for event in &events {
            if event.token() == LISTENER {
                accept_all(&listener, upstream, &poll, &mut pairs)?;
                continue;
            }
            let (index, side) = (event.token().0 / 2, event.token().0 % 2);
            let Some(slot) = pairs.get_mut(index) else { continue };
            let Some(pair) = slot.as_mut() else { continue };
            // A side readable: what it sent goes to the other. A side writable
            // again: what it could not take before goes now. Nothing else is
            // tried, so no read or write ends in EAGAIN but the one that drains.
            let mut open = true;
            // A side that closed (or failed) is read to its end: its last
            // bytes and the close may come in one event, never to be told again.
            let ending = event.is_read_closed() || event.is_error();
            if ending && let Some(closing) = pair.closing.get_mut(side) {
                *closing = true;
            }
            if event.is_readable() || ending {
                open = relay(pair, side, &mut buf);
            }
            if open && event.is_writable() && pair.unsent.get(1 - side).is_some_and(|u| !u.is_empty()) {
                open = relay(pair, 1 - side, &mut buf);
            }
            if !open && let Some(mut pair) = slot.take() {
                for side in &mut pair.sides {
                    let _ = poll.registry().deregister(side);
                }
            }
        }
    }
}

fn accept_all(
    listener: &mio::net::TcpListener,
    upstream: SocketAddr,
    poll: &mio::Poll,
    pairs: &mut Vec<Option<Pair>>,
) -> anyhow::Result<()> {
    loop {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) => {
                // A client gone before its accept: on to the next. Out of
                // descriptors: stop here (edge-triggered, the queued ones wait
                // for the next arrival; a benchmark's clients connect once).
                eprintln!("accept failed: {e}");
                if matches!(e.kind(), ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset) {
                    continue;
                }
                return Ok(());
            }
        };
        // Connecting blocks this loop briefly: fine for a benchmark whose
        // clients connect before they are measured.
        let Ok(server) = std::net::TcpStream::connect(upstream) else { continue };
        server.set_nonblocking(true)?;
        let server = mio::net::TcpStream::from_std(server);
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let index = match pairs.iter().position(Option::is_none) {
            Some(free) => free,
            None => {
                pairs.push(None);
                pairs.len() - 1
            }
        };
        let mut pair = Pair { sides: [client, server], unsent: [Vec::new(), Vec::new()], closing: [false; 2] };
        for (side, stream) in pair.sides.iter_mut().enumerate() {
            let token = mio::Token(index * 2 + side);
            poll.registry().register(stream, token, mio::Interest::READABLE | mio::Interest::WRITABLE)?;
        }
        if let Some(slot) = pairs.get_mut(index) {
            *slot = Some(pair);
        }
    }
}

/// Moves what side `from` sent to the other side, until `from` has nothing
/// more or the other side takes no more; once `from` said it closes, until
/// its read says so (end of stream or would block), even after a short read.
/// `false`: the pair is done.
fn relay(pair: &mut Pair, from: usize, buf: &mut [u8]) -> bool {
    let to_the_end = pair.closing.get(from).copied().unwrap_or(true);
    let Pair { sides, unsent, .. } = pair;
    let [a, b] = sides;
    let (reader, writer) = if from == 0 { (a, b) } else { (b, a) };
    let Some(unsent) = unsent.get_mut(from) else { return false };
    // What the other side could not take before goes first.
    if !unsent.is_empty() {
        match write_some(writer, unsent) {
            Ok(n) => {
                unsent.drain(..n);
            }
            Err(_) => return false,
        }
        if !unsent.is_empty() {
            return true;
        }
    }
    loop {
        let n = match reader.read(buf) {
            Ok(0) => return false,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return false,
        };
        let read = buf.get(..n).unwrap_or_default();
        match write_some(writer, read) {
            Ok(written) if written == n => {}
            Ok(written) => {
                unsent.extend_from_slice(read.get(written..).unwrap_or_default());
                return true;
            }
            Err(_) => return false,
        }
        // A read that did not fill the buffer took everything there was: with
        // edge-triggered readiness, more arriving later is another event.
        if n < buf.len() && !to_the_end {
            return true;
        }
    }
}

/// Writes as much of `bytes` as the socket takes now.
fn write_some(writer: &mut mio::net::TcpStream, bytes: &[u8]) -> std::io::Result<usize> {
    let mut written = 0;
    while let Some(rest) = bytes.get(written..).filter(|r| !r.is_empty()) {
        match writer.write(rest) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::io::{Read, Write};

    use super::*;

    /// Each engine relays both ways, a result larger than a socket's buffer
    /// included, and closes the client once it closes its side.
    #[test]
    fn each_engine_relays_both_ways_and_closes() {
        for engine in [Engine::Tokio, Engine::Mio, Engine::Uring] {
            // Upstream: echoes what it reads until the end.
            let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let upstream_addr = upstream.local_addr().unwrap();
            std::thread::spawn(move || {
                let (mut conn, _) = upstream.accept().unwrap();
                let mut buf = [0u8; 8192];
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => conn.write_all(&buf[..n]).unwrap(),
                    }
                }
            });
            let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
            let args = Args { engine, listen, upstream: upstream_addr };
            std::thread::spawn(move || run(&args));
            // A forwarder that failed to start (io_uring disabled, say) never listens.
            let mut client = (0..500)
                .find_map(|_| {
                    std::net::TcpStream::connect(listen)
                        .inspect_err(|_| std::thread::sleep(std::time::Duration::from_millis(10)))
                        .ok()
                })
                .unwrap_or_else(|| panic!("the {engine:?} forwarder did not start listening"));
            client.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
            let sent: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
            let mut writer = client.try_clone().unwrap();
            let expected = sent.clone();
            let writing = std::thread::spawn(move || writer.write_all(&expected).unwrap());
            let mut echoed = vec![0u8; sent.len()];
            client.read_exact(&mut echoed).unwrap();
            writing.join().unwrap();
            assert!(echoed == sent, "{engine:?} changed the bytes");
            client.shutdown(std::net::Shutdown::Write).unwrap();
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).unwrap();
            assert!(rest.is_empty(), "{engine:?} sent more than it was given");
        }
    }
}
