//! Client bytes reach the Postgres gateway before anyone is authenticated: the
//! startup parser, the framer and the frontend decoder must refuse garbage,
//! never panic, never read past a declared length, and forward a frame's raw
//! bytes exactly as they arrived; the scan of statement text for what may
//! deallocate, and the reading of a lone `DEALLOCATE name`, must never
//! panic either. The relay's quick reads of a Parse's layout and of a Bind's
//! names, which spare it decoding, must agree with the decoder.

#![no_main]

use airlock_data_plane::postgres::keywords::{deallocated_name, mentions_deallocation};
use airlock_data_plane::postgres::protocol::FrontendMessage;
use airlock_data_plane::postgres::protocol::frame::parse_frontend_frame;
use airlock_data_plane::postgres::protocol::frontend::{
    bind_names, decode_frontend, decode_password, decode_sasl_initial_response, parse_layout,
};
use airlock_data_plane::postgres::protocol::startup::parse_startup;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

/// A small cap so the fuzzer reaches the too-long path, far above any seed.
const MAX_LEN: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let before = buf.len();
    match parse_startup(&mut buf) {
        Ok(None) => assert_eq!(buf.len(), before, "need-more-bytes consumed input"),
        Ok(Some(_)) | Err(_) => {}
    }
    // Whatever the startup outcome, keep framing what follows (also covers
    // inputs that are only typed messages).
    let mut consumed = data.len() - buf.len();
    for _ in 0..10_000 {
        let len = buf.len();
        match parse_frontend_frame(&mut buf, MAX_LEN) {
            Ok(Some(frame)) => {
                assert_eq!(frame.raw().as_ref(), &data[consumed..consumed + frame.len()], "frame is not the input");
                consumed += frame.len();
                let decoded = decode_frontend(&frame);
                let body = frame.body();
                if let Ok(FrontendMessage::Parse { name, sql, .. }) = &decoded {
                    assert_eq!(parse_layout(&body), Some((name.len(), sql.len())), "the layout read disagrees");
                } else if frame.tag() == b'P' {
                    assert_eq!(parse_layout(&body), None, "a layout read where the decoder refuses");
                }
                if let Ok(FrontendMessage::Bind { portal, statement, .. }) = &decoded {
                    assert_eq!(bind_names(&body), Some((&portal[..], &statement[..])), "the names read disagree");
                }
                match decoded {
                    Ok(FrontendMessage::Password(body)) => {
                        let _ = decode_password(&body);
                        let _ = decode_sasl_initial_response(&body);
                    }
                    // The relay scans statement text for what may deallocate.
                    Ok(FrontendMessage::Query { sql } | FrontendMessage::Parse { sql, .. }) => {
                        let mentioned = mentions_deallocation(&sql);
                        // The relay reads a lone DEALLOCATE only in a text the scan flagged.
                        assert!(deallocated_name(&sql).is_none() || mentioned, "a DEALLOCATE the scan missed");
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
