//! The gateway reads the upstream server's messages during its own
//! authentication and, for masking, the results: the framer, the backend
//! decoder and the masking rewriters must refuse garbage and never panic, and
//! what a rewriter writes must be one well-formed message of the same kind.

#![no_main]

use std::sync::Arc;

use airlock_core::policy::{MaskStrategy, Policy, ResultMask, WholeMask};
use airlock_data_plane::postgres::masking::{self, Column, ValueKind};
use airlock_data_plane::postgres::protocol::backend::decode_backend;
use airlock_data_plane::postgres::protocol::frame::parse_frame;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

const MAX_LEN: usize = 1 << 20;

const POLICY: &str = "version: 1\nmasking:\n  - name: all\n    columns: ['*.*.email']\n    detectors: [credit_card, email, iban, national_id, api_key]\n    strategy: partial\n";

/// One well-formed message of kind `tag`, and nothing after it.
fn well_formed(out: &[u8], tag: u8) {
    let mut buf = BytesMut::from(out);
    let frame = parse_frame(&mut buf, usize::MAX >> 1).expect("a rewritten message frames").expect("complete");
    assert!(buf.is_empty(), "bytes after the rewritten message");
    assert_eq!(frame.tag(), tag);
    decode_backend(&frame).expect("a rewritten message decodes");
}

fuzz_target!(|data: &[u8]| {
    let Ok(policy) = Policy::parse(POLICY) else { return };
    let mask = Arc::new(ResultMask::unread(policy.masking));
    let whole = WholeMask { rule: "all".into(), strategy: MaskStrategy::Hash };
    let kinds = [ValueKind::Text, ValueKind::Json, ValueKind::Jsonb, ValueKind::Scalar, ValueKind::Other];
    let mut buf = BytesMut::from(data);
    for _ in 0..10_000 {
        let len = buf.len();
        match parse_frame(&mut buf, MAX_LEN) {
            Ok(Some(frame)) => {
                if let Ok(airlock_data_plane::postgres::protocol::BackendMessage::ErrorResponse(fields)) =
                    decode_backend(&frame)
                {
                    let _ = (fields.severity(), fields.code(), fields.message());
                }
                let raw = frame.raw();
                match frame.tag() {
                    b'D' => {
                        // As many columns as the row claims, each masked a different way.
                        let count = raw.get(5..7).map_or(0, |b| usize::from(u16::from_be_bytes([b[0], b[1]])));
                        let columns = (0..count.min(64))
                            .map(|i| {
                                let column = match i % 4 {
                                    0 => Column::Pass,
                                    1 => Column::Detect,
                                    2 => Column::Computed(whole.clone()),
                                    _ => Column::Whole(whole.clone()),
                                };
                                let kind = kinds.get(i % kinds.len()).copied().unwrap_or(ValueKind::Text);
                                (column, kind, i % 2 == 0)
                            })
                            .collect();
                        let shape = masking::shape(columns, mask.clone());
                        if let Ok(Some(out)) = masking::mask_row(raw, &shape, b"t") {
                            well_formed(&out, b'D');
                        }
                    }
                    b'E' | b'N' => {
                        for withhold in [false, true] {
                            if let Some(out) = masking::mask_report(raw, &mask, withhold, b"t") {
                                well_formed(&out, frame.tag());
                            }
                        }
                    }
                    b'd' => {
                        if let Some(out) = masking::mask_copy_data(raw, &mask, b"t") {
                            well_formed(&out, b'd');
                        }
                    }
                    _ => {}
                }
            }
            Ok(None) => {
                assert_eq!(buf.len(), len, "need-more-bytes consumed input");
                break;
            }
            Err(_) => break,
        }
    }
});
