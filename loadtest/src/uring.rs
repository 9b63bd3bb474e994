//! The `uring` engine of the byte forwarder (`forward.rs`): one thread, one
//! io_uring, no readiness loop.
//!
//! Each socket of a pair always has a receive outstanding into a buffer of its
//! own. When one completes with bytes, they go to the other socket in a send
//! that waits until all of them are taken (`MSG_WAITALL`), and the socket's
//! next receive into the same buffer is linked behind that send, so it starts
//! only once the buffer is free again. A send that succeeds posts no
//! completion (`IOSQE_CQE_SKIP_SUCCESS`). One `io_uring_enter` per turn of the
//! loop submits what the last turn queued and waits for the next completion;
//! the ring runs its deferred work only then (`IORING_SETUP_DEFER_TASKRUN`),
//! in this thread.
//!
//! The only module of the workspace with `unsafe` code: the kernel reads and
//! writes the buffers and sockets a queued entry names while the entry is
//! out, which Rust's borrows cannot express. The invariant that keeps it
//! sound: a pair's sockets and buffers are dropped only when no entry naming
//! them is out (`Pair::armed` all false), and its buffers are boxed so that
//! the table of pairs growing moves none of them.

#![allow(unsafe_code)]

use std::io::{self, ErrorKind};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};

use anyhow::Context;
use io_uring::{IoUring, opcode, squeue, types};

/// `user_data` of the listener's accept.
const ACCEPT: u64 = u64::MAX;
const RECV: u64 = 0;
const SEND: u64 = 1;

/// `user_data` of an entry: the pair's slot, the side the bytes came from, and
/// which operation.
fn tag(slot: usize, side: usize, op: u64) -> u64 {
    ((slot as u64) << 2) | ((side as u64) << 1) | op
}

fn untag(data: u64) -> (usize, usize, u64) {
    ((data >> 2) as usize, ((data >> 1) & 1) as usize, data & 1)
}

/// A client and its upstream connection: sides 0 and 1.
struct Pair {
    sides: [TcpStream; 2],
    /// `bufs[i]` holds what side `i` sent until the other side took it.
    bufs: [Box<[u8]>; 2],
    /// A receive on side `i` is out (perhaps linked behind the send of what
    /// the last one brought): its buffer and both sockets are the kernel's.
    armed: [bool; 2],
    /// Side `i` will not be read again: it ended its stream, or the pair failed.
    done: [bool; 2],
}

/// Relays until the process is killed.
pub fn run(listen: SocketAddr, upstream: SocketAddr, chunk: usize) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    let mut ring: IoUring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(256)
        .context("setting up an io_uring (a kernel of 6.1 or later, with io_uring enabled)")?;
    let mut pairs: Vec<Option<Pair>> = Vec::new();
    let outcome = serve(&listener, &mut ring, upstream, chunk, &mut pairs);
    // Only a failure gets here. Entries may still be out naming the pairs'
    // buffers and sockets and the listener, and dropping the ring does not
    // wait for them: they are left to the process's end, which follows.
    std::mem::forget(pairs);
    std::mem::forget(listener);
    outcome
}

fn serve(
    listener: &TcpListener,
    ring: &mut IoUring,
    upstream: SocketAddr,
    chunk: usize,
    pairs: &mut Vec<Option<Pair>>,
) -> anyhow::Result<()> {
    let (submitter, mut sq, mut cq) = ring.split();
    let mut completions: Vec<(u64, i32)> = Vec::with_capacity(64);
    let accept = opcode::Accept::new(types::Fd(listener.as_raw_fd()), std::ptr::null_mut(), std::ptr::null_mut())
        .build()
        .user_data(ACCEPT);
    let mut queue = Queue { entries: Vec::with_capacity(64), links: Vec::with_capacity(64) };
    queue.push(accept.clone(), false);
    loop {
        // Everything queued goes in, in order (a linked pair stays together:
        // it is only ever appended whole and the queue is drained in turns
        // that end between pairs).
        while !queue.entries.is_empty() {
            let room = sq.capacity() - sq.len();
            let mut take = room.min(queue.entries.len());
            // Never end a submission after an entry that links to the next.
            while take > 0 && queue.links.get(take - 1).copied().unwrap_or(false) {
                take -= 1;
            }
            if take == 0 {
                sq.sync();
                submitter.submit()?;
                sq.sync();
                continue;
            }
            // SAFETY: every entry names a socket and a buffer of a pair that
            // stays in the table, unmoved and open, until the completion of
            // the receive that ends its chain comes back (see the module's
            // comment), or the listener, which lives as long as this loop.
            unsafe { sq.push_multiple(queue.entries.get(..take).unwrap_or_default()) }
                .map_err(|_| io::Error::other("submission queue full"))?;
            queue.entries.drain(..take);
            queue.links.drain(..take);
        }
        sq.sync();
        match submitter.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::Interrupted) => continue,
            // The completion queue is full: reap first.
            Err(e) if e.raw_os_error() == Some(16) => {}
            Err(e) => return Err(e).context("io_uring_enter"),
        }
        cq.sync();
        completions.clear();
        completions.extend(cq.by_ref().map(|c| (c.user_data(), c.result())));
        for &(data, result) in &completions {
            if data == ACCEPT {
                if result >= 0 {
                    // SAFETY: a successful accept's result is a new descriptor
                    // that nothing else owns.
                    let client = unsafe { TcpStream::from_raw_fd(result) };
                    open_pair(client, upstream, chunk, pairs, &mut queue);
                } else {
                    eprintln!("accept failed: {}", io::Error::from_raw_os_error(-result));
                }
                queue.push(accept.clone(), false);
                continue;
            }
            let (slot, side, op) = untag(data);
            if op == SEND {
                // Only a failed (or short) send completes, success posting
                // nothing; it cancels the receive linked behind it, whose
                // completion fails the pair. The slot may hold another pair
                // by now, so this one is not looked at.
                continue;
            }
            let Some(entry) = pairs.get_mut(slot) else { continue };
            let Some(pair) = entry.as_mut() else { continue };
            if let Some(armed) = pair.armed.get_mut(side) {
                *armed = false;
            }
            if result > 0 && !pair.done.get(side).copied().unwrap_or(true) {
                relay(pair, slot, side, result.unsigned_abs() as usize, &mut queue);
            } else if result == 0 {
                // The side ended its stream: the other hears it once it has
                // everything before it (which the side's earlier sends, all
                // complete, saw to).
                if let Some(done) = pair.done.get_mut(side) {
                    *done = true;
                }
                if let Some(other) = pair.sides.get(1 - side) {
                    let _ = other.shutdown(Shutdown::Write);
                }
            } else {
                fail(pair);
            }
            if pair.armed == [false, false] && pair.done == [true, true] {
                *entry = None;
            }
        }
    }
}

/// Entries waiting for room in the submission queue, and whether each links
/// to the next.
struct Queue {
    entries: Vec<squeue::Entry>,
    links: Vec<bool>,
}

impl Queue {
    fn push(&mut self, entry: squeue::Entry, links: bool) {
        self.entries.push(entry);
        self.links.push(links);
    }
}

fn open_pair(client: TcpStream, upstream: SocketAddr, chunk: usize, pairs: &mut Vec<Option<Pair>>, queue: &mut Queue) {
    // Connecting blocks this loop briefly: fine for a benchmark whose clients
    // connect before they are measured.
    let Ok(server) = TcpStream::connect(upstream) else { return };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let slot = match pairs.iter().position(Option::is_none) {
        Some(free) => free,
        None => {
            pairs.push(None);
            pairs.len() - 1
        }
    };
    let mut pair = Pair {
        sides: [client, server],
        bufs: [vec![0u8; chunk].into_boxed_slice(), vec![0u8; chunk].into_boxed_slice()],
        armed: [true, true],
        done: [false, false],
    };
    for side in 0..2 {
        if let Some(recv) = receive(&mut pair, slot, side) {
            queue.push(recv, false);
        }
    }
    if let Some(entry) = pairs.get_mut(slot) {
        *entry = Some(pair);
    }
}

/// The receive into side `side`'s buffer.
fn receive(pair: &mut Pair, slot: usize, side: usize) -> Option<squeue::Entry> {
    let fd = pair.sides.get(side)?.as_raw_fd();
    let buf = pair.bufs.get_mut(side)?;
    let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
    Some(opcode::Recv::new(types::Fd(fd), buf.as_mut_ptr(), len).build().user_data(tag(slot, side, RECV)))
}

/// Sends the `n` bytes side `from` sent to the other side, its next receive
/// linked behind.
fn relay(pair: &mut Pair, slot: usize, from: usize, n: usize, queue: &mut Queue) {
    let Some(to) = pair.sides.get(1 - from).map(AsRawFd::as_raw_fd) else { return };
    let Some(buf) = pair.bufs.get(from) else { return };
    let n = n.min(buf.len());
    const MSG_WAITALL: i32 = 0x100;
    const MSG_NOSIGNAL: i32 = 0x4000;
    let send = opcode::Send::new(types::Fd(to), buf.as_ptr(), u32::try_from(n).unwrap_or(0))
        .flags(MSG_WAITALL | MSG_NOSIGNAL)
        .build()
        .flags(squeue::Flags::IO_LINK | squeue::Flags::SKIP_SUCCESS)
        .user_data(tag(slot, from, SEND));
    let Some(recv) = receive(pair, slot, from) else { return };
    queue.push(send, true);
    queue.push(recv, false);
    if let Some(armed) = pair.armed.get_mut(from) {
        *armed = true;
    }
}

/// Ends both directions: a receive still out comes back (empty or failed),
/// and the pair is dropped when none is.
fn fail(pair: &mut Pair) {
    pair.done = [true, true];
    for side in &pair.sides {
        let _ = side.shutdown(Shutdown::Both);
    }
}
