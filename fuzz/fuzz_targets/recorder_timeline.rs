//! The timeline decoder reads whatever a client sent and a server answered,
//! as recorded: it must never panic, stay within its bounds, hand entries out
//! in `seq` order, and decode the same entries however the bytes are cut into
//! frames.
//!
//! Input: records of a kind byte (0 client bytes, 1 server bytes, 2 a decision:
//! its verdict byte then its statement, 3 the end), a big-endian u16 length,
//! the bytes.

#![no_main]

use airlock_proto::v1::{self, frame::Body};
use airlock_recorder::timeline::{self, Entry};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fn frames(mut data: &[u8], split: bool) -> Vec<v1::Frame> {
    let mut out = Vec::new();
    while let [kind, hi, lo, rest @ ..] = data {
        let len = (usize::from(*hi) << 8 | usize::from(*lo)).min(rest.len());
        let (bytes, tail) = rest.split_at(len);
        data = tail;
        let at = out.len() as i64 * 1000;
        let mut push = |body| {
            out.push(v1::Frame {
                session_id: String::new(),
                seq: out.len() as u64 + 1,
                at_unix_micros: at,
                body: Some(body),
            })
        };
        match kind % 4 {
            0 | 1 => {
                let pieces: Vec<&[u8]> =
                    if split { bytes.chunks(bytes.len().div_ceil(3).max(1)).collect() } else { vec![bytes] };
                for piece in pieces {
                    let piece = Bytes::copy_from_slice(piece);
                    push(if kind % 4 == 0 { Body::ClientBytes(piece) } else { Body::ServerBytes(piece) });
                }
            }
            2 => push(Body::Decision(v1::Decision {
                statement: String::from_utf8_lossy(bytes.get(1..).unwrap_or_default()).into_owned(),
                verdict: i32::from(bytes.first().copied().unwrap_or(0) % 6),
                rule: "rule".into(),
                ..Default::default()
            })),
            _ => push(Body::End(v1::SessionEnd::default())),
        }
    }
    out
}

/// What does not depend on where frames were cut.
fn content(entries: &[Entry]) -> Vec<Entry> {
    entries.iter().map(|e| Entry { seq: 0, at: String::new(), duration_ms: None, ..e.clone() }).collect()
}

fuzz_target!(|data: &[u8]| {
    let whole = timeline::decode_all(&frames(data, false));
    for pair in whole.windows(2) {
        assert!(pair[0].seq <= pair[1].seq, "entries out of order");
    }
    for e in &whole {
        let rows = e.rows.as_ref().map_or(0, Vec::len);
        assert!(rows <= timeline::MAX_ROWS);
        assert!(e.row_count.unwrap_or(0) >= rows as u64);
        assert!(e.statement.as_ref().map_or(0, String::len) <= timeline::MAX_STATEMENT_BYTES + 3);
        for row in e.rows.iter().flatten() {
            for cell in row.iter().flatten() {
                assert!(cell.len() <= timeline::MAX_VALUE_BYTES + 3);
            }
        }
    }
    let split = timeline::decode_all(&frames(data, true));
    assert_eq!(content(&whole), content(&split), "cutting frames changed the timeline");
});
