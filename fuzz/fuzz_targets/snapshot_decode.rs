//! A worker starts from a snapshot read from disk or the control plane: decoding must
//! refuse what it cannot read, never panic, and a state it accepts must re-encode.

#![no_main]

use airlock_core::snapshot;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(state) = snapshot::decode(data) {
        let bytes = snapshot::encode(&state);
        assert!(bytes.is_ok(), "a decoded snapshot does not encode: {bytes:?}");
        let again = bytes.ok().and_then(|b| snapshot::decode(&b));
        assert!(again.as_ref() == Some(&state), "a decoded snapshot re-encoded decodes as {again:?}");
    }
});
