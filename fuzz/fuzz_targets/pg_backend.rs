//! The gateway reads the upstream server's messages during its own
//! authentication and, for masking and recording, the results: the framer and
//! the backend decoder must refuse garbage and never panic.

#![no_main]

use airlock_data_plane::postgres::protocol::backend::decode_backend;
use airlock_data_plane::postgres::protocol::frame::parse_frame;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

const MAX_LEN: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
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
            }
            Ok(None) => {
                assert_eq!(buf.len(), len, "need-more-bytes consumed input");
                break;
            }
            Err(_) => break,
        }
    }
});
