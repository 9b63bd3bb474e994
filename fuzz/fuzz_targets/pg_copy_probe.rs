//! After a COPY it could not follow, the relay asks the server where it was and
//! holds back the server's messages until the answer (`copy_watch::Probe`).
//! Whatever the server sends, the probe must never panic, never hold more than
//! its limit, and what it hands back must be whole messages, with no more
//! ignored Syncs than the window it asked about.
//!
//! The input: five bytes (the copy's batch, the window of Syncs, flags, the
//! ReadyForQuery messages owed when the probe was sent and those seen since),
//! then messages, each a tag, a length byte and a body: that many bytes of
//! the input (the byte's low six bits), or, with bit 6 set, that many times
//! 16 KiB of zeros, so that a few messages reach the hold limit; with the high
//! bit set, the probe's portal name is added to the body, as the server's
//! error to the probe carries it.

#![no_main]

use airlock_data_plane::postgres::copy_watch::{PROBE_HOLD_LIMIT, Probe, ProbeStep};
use airlock_data_plane::postgres::protocol::frame::parse_frame;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((head, mut rest)) = data.split_first_chunk::<5>() else { return };
    let [from, window, flags, owed, seen] = head.map(u64::from);
    let mut probe = Probe::new(from, window, flags & 1 != 0, flags & 2 != 0, owed);
    let name = probe.name().as_bytes().to_vec();
    while let [tag, len, tail @ ..] = rest {
        let count = usize::from(len & 0x3f);
        let body = if len & 0x40 != 0 {
            rest = tail;
            vec![0; count * 16 * 1024]
        } else {
            let (body, after) = tail.split_at(count.min(tail.len()));
            rest = after;
            body.to_vec()
        };
        let mut raw = vec![*tag];
        let named = if len & 0x80 != 0 { &name[..] } else { &[][..] };
        let declared = u32::try_from(4 + body.len() + named.len()).unwrap_or(u32::MAX);
        raw.extend_from_slice(&declared.to_be_bytes());
        raw.extend_from_slice(&body);
        raw.extend_from_slice(named);
        match probe.step(*tag, &raw) {
            ProbeStep::Held => continue,
            ProbeStep::Lost => return,
            ProbeStep::Finished => break,
        }
    }
    let Some((held, ignored)) = probe.outcome(seen) else { return };
    assert!(ignored <= window, "more Syncs ignored than the window holds");
    assert!(held.len() <= PROBE_HOLD_LIMIT, "held past the limit");
    let mut held = BytesMut::from(&held[..]);
    while !held.is_empty() {
        assert!(matches!(parse_frame(&mut held, usize::MAX >> 1), Ok(Some(_))), "a message held back in part");
    }
});
