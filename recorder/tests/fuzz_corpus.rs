//! Replays the `recorder_chunk` fuzzer's seed inputs (`fuzz/corpus/recorder_chunk/`):
//! a chunk must decode or be refused, never panic, and the frames of one that
//! decodes must make a chunk that decodes to the same frames.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::path::PathBuf;

use airlock_recorder::chunk;

#[test]
fn recorder_chunk_seeds() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/recorder_chunk");
    let mut decoded = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let _ = chunk::Header::parse(&bytes);
        let Ok(c) = chunk::decode(&bytes) else { continue };
        let Ok(frames) = c.frames().collect::<Result<Vec<_>, _>>() else { continue };
        let mut payload = Vec::new();
        for frame in frames.iter().cloned() {
            chunk::encode_frame(frame, &mut payload);
        }
        let h = &c.header;
        let again = chunk::decode(&chunk::encode(h.index, &h.prev_hash, h.first_seq, h.last_seq, &payload).unwrap())
            .unwrap()
            .frames()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        assert_eq!(again, frames, "{}", path.display());
        decoded += 1;
    }
    assert!(decoded >= 1, "no seed in {} decoded", dir.display());
}

/// Replays the `recorder_timeline` fuzzer's seed inputs (`fuzz/corpus/recorder_timeline/`)
/// through the timeline decoder, whole and cut into more frames: the same entries, in order.
#[test]
fn recorder_timeline_seeds() {
    use airlock_proto::v1::{self, frame::Body};
    use airlock_recorder::timeline::{self, Entry};

    fn frames(mut data: &[u8], split: bool) -> Vec<v1::Frame> {
        let mut out = Vec::new();
        while let [kind, hi, lo, rest @ ..] = data {
            let len = (usize::from(*hi) << 8 | usize::from(*lo)).min(rest.len());
            let (bytes, tail) = rest.split_at(len);
            data = tail;
            let mut bodies = Vec::new();
            match kind % 4 {
                0 | 1 => {
                    let size = if split { bytes.len().div_ceil(3).max(1) } else { bytes.len().max(1) };
                    for piece in bytes.chunks(size) {
                        let piece = bytes::Bytes::copy_from_slice(piece);
                        bodies.push(if kind % 4 == 0 { Body::ClientBytes(piece) } else { Body::ServerBytes(piece) });
                    }
                }
                2 => bodies.push(Body::Decision(v1::Decision {
                    statement: String::from_utf8_lossy(bytes.get(1..).unwrap_or_default()).into_owned(),
                    verdict: i32::from(bytes.first().copied().unwrap_or(0) % 6),
                    rule: "rule".into(),
                    ..Default::default()
                })),
                _ => bodies.push(Body::End(v1::SessionEnd::default())),
            }
            for body in bodies {
                let seq = out.len() as u64 + 1;
                out.push(v1::Frame { session_id: String::new(), seq, at_unix_micros: 0, body: Some(body) });
            }
        }
        out
    }
    let content = |entries: Vec<Entry>| -> Vec<Entry> {
        entries.into_iter().map(|e| Entry { seq: 0, at: String::new(), duration_ms: None, ..e }).collect()
    };

    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/recorder_timeline");
    let mut statements = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let whole = timeline::decode_all(&frames(&bytes, false));
        assert!(whole.windows(2).all(|w| w[0].seq <= w[1].seq), "{}", path.display());
        statements += whole.iter().filter(|e| e.statement.is_some()).count();
        assert_eq!(content(whole), content(timeline::decode_all(&frames(&bytes, true))), "{}", path.display());
    }
    assert!(statements >= 10, "the seeds decode to {statements} statements");
}
