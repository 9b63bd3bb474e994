//! Replays the `event_decode` fuzzer's seed inputs (`fuzz/corpus/event_decode/`):
//! bus messages and stored payloads must decode or be refused, never panic, and an
//! event that decodes must survive re-encoding unchanged.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::path::PathBuf;

use airlock_core::chain::Verifier;
use airlock_proto::EventRecord;
use airlock_proto::convert::{decode_event, encode_event, header};
use prost::Message;

#[test]
fn event_decode_seeds() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/event_decode");
    let mut decoded = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        if let Ok(event) = decode_event(&bytes) {
            assert_eq!(decode_event(&encode_event(&event)).unwrap(), event, "{}", path.display());
            decoded += 1;
        }
        if let Ok(record) = EventRecord::decode(bytes.as_slice()) {
            let _ = Verifier::new().check(&header(&record), &record.payload, &record.prev_hash, &record.hash);
            decoded += usize::from(decode_event(&record.payload).is_ok());
        }
    }
    assert!(decoded >= 1, "no seed in {} decoded", dir.display());
}
