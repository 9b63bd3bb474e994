//! The recorder reads chunks back from object storage, which it does not trust:
//! decoding must refuse what it cannot read, never panic, and stay within its
//! bounds; the frames of a chunk it accepts must make a chunk that decodes to
//! the same frames.

#![no_main]

use airlock_recorder::chunk;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = chunk::Header::parse(data);
    let Ok(decoded) = chunk::decode(data) else { return };
    let Ok(frames) = decoded.frames().collect::<Result<Vec<_>, _>>() else { return };
    let mut payload = Vec::new();
    for frame in frames.iter().cloned() {
        chunk::encode_frame(frame, &mut payload);
    }
    let h = &decoded.header;
    let again = chunk::encode(h.index, &h.prev_hash, h.first_seq, h.last_seq, &payload)
        .ok()
        .and_then(|bytes| chunk::decode(&bytes).ok())
        .and_then(|c| c.frames().collect::<Result<Vec<_>, _>>().ok());
    assert!(again.as_ref() == Some(&frames), "an accepted chunk's frames re-encode as {again:?}");
});
