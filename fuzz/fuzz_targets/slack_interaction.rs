//! Slack's button presses arrive unauthenticated until their signature is
//! checked, and the body is read first to learn the tenant: parsing it and
//! checking the signature must refuse, never panic.

#![no_main]

use airlock_control_plane::notify::slack::{parse_interaction, verify_request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_interaction(data);
    let split = data.iter().position(|b| *b == b'\n').unwrap_or(0);
    let (headers, body) = data.split_at(split);
    let body = body.strip_prefix(b"\n").unwrap_or(body);
    let text = String::from_utf8_lossy(headers);
    let (timestamp, signature) = text.split_once(' ').unwrap_or((&text, ""));
    let _ = verify_request(b"signing-secret", Some(timestamp), Some(signature), body, 1_700_000_000);
});
