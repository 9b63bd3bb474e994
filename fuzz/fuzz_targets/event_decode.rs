//! Events arrive from NATS and the backfill stream as protobuf: decoding must refuse
//! garbage, never panic, and an event it accepts must survive re-encoding unchanged.

#![no_main]

use airlock_core::chain::Verifier;
use airlock_proto::EventRecord;
use airlock_proto::convert::{decode_event, encode_event, header};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = decode_event(data) {
        let again = decode_event(&encode_event(&event));
        assert!(again.as_ref().is_ok_and(|e| *e == event), "{event:?} re-encoded decodes as {again:?}");
    }
    if let Ok(record) = EventRecord::decode(data) {
        let _ = Verifier::new().check(&header(&record), &record.payload, &record.prev_hash, &record.hash);
        let _ = decode_event(&record.payload);
    }
});
