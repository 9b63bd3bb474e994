//! Replays the `slack_interaction` fuzzer's seed inputs (`fuzz/corpus/slack_interaction/`):
//! Slack button presses are parsed and their signatures checked or refused, never a panic.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::path::PathBuf;

use airlock_control_plane::notify::slack::{parse_interaction, verify_request};

#[test]
fn slack_interaction_seeds() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/slack_interaction");
    let mut parsed = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display())) {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        let split = bytes.iter().position(|b| *b == b'\n').unwrap_or(0);
        let (headers, body) = bytes.split_at(split);
        let body = body.strip_prefix(b"\n").unwrap_or(body);
        parsed += usize::from(parse_interaction(body).is_ok());
        let text = String::from_utf8_lossy(headers);
        let (timestamp, signature) = text.split_once(' ').unwrap_or((&text, ""));
        assert!(verify_request(b"signing-secret", Some(timestamp), Some(signature), body, 1_700_000_000).is_err());
    }
    assert!(parsed >= 1, "no seed interaction parsed");
}
