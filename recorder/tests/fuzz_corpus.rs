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
