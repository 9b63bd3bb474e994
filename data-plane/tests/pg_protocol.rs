//! The Postgres codec against bytes captured from real clients and servers
//! (data-plane/testdata/postgres/), every prefix of every message, and the
//! malformed inputs that broke the pgwire prototype.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::path::PathBuf;

use airlock_data_plane::postgres::copy_watch::{Probe, ProbeStep};
use airlock_data_plane::postgres::keywords::{deallocated_name, mentions_deallocation};
use airlock_data_plane::postgres::protocol::backend::{Authentication, BackendMessage, decode_backend};
use airlock_data_plane::postgres::protocol::encode::{self, Report, Severity};
use airlock_data_plane::postgres::protocol::frame::{
    DEFAULT_MAX_BACKEND_MESSAGE_LEN, DEFAULT_MAX_FRONTEND_MESSAGE_LEN, Frame, parse_frame, parse_frontend_frame,
};
use airlock_data_plane::postgres::protocol::frontend::{
    FrontendMessage, ObjectKind, bind_names, decode_frontend, decode_password, decode_sasl_initial_response,
    param_format, parse_layout,
};
use airlock_data_plane::postgres::protocol::startup::{Startup, encode_startup, parse_startup};
use airlock_data_plane::postgres::protocol::{ProtocolError, sqlstate};
use airlock_data_plane::postgres::roles::LoginGuard;
use airlock_data_plane::postgres::scram;
use bytes::{BufMut, Bytes, BytesMut};

fn testdata(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/postgres").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every proper prefix of `msg` needs more bytes and leaves the buffer as it
/// was; the whole of it parses and is consumed exactly, even with the next
/// message's bytes behind it.
fn check_all_prefixes<T: std::fmt::Debug>(
    msg: &[u8],
    parse: impl Fn(&mut BytesMut) -> Result<Option<T>, ProtocolError>,
) -> T {
    for i in 0..msg.len() {
        let mut buf = BytesMut::from(&msg[..i]);
        match parse(&mut buf) {
            Ok(None) => {}
            other => panic!("prefix of {i}/{} bytes gave {other:?}", msg.len()),
        }
        assert_eq!(&buf[..], &msg[..i], "a prefix of {i} bytes was consumed");
    }
    let mut buf = BytesMut::from(msg);
    buf.put_slice(b"Snext");
    let out = parse(&mut buf).unwrap().expect("a whole message");
    assert_eq!(&buf[..], b"Snext", "the message was not consumed exactly");
    out
}

fn frontend_frame(buf: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
    parse_frontend_frame(buf, DEFAULT_MAX_FRONTEND_MESSAGE_LEN)
}

fn backend_frame(buf: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
    parse_frame(buf, DEFAULT_MAX_BACKEND_MESSAGE_LEN)
}

/// Splits a captured client stream into its startup message and frames,
/// checking every prefix of each and that the frames' raw bytes put back
/// together are the stream byte for byte.
fn split_frontend(stream: &[u8]) -> (Startup, Vec<Frame>) {
    let mut buf = BytesMut::from(stream);
    let startup = parse_startup(&mut buf).unwrap().unwrap();
    let startup_len = stream.len() - buf.len();
    check_all_prefixes(&stream[..startup_len], parse_startup);
    let mut frames = Vec::new();
    let mut rebuilt = stream[..startup_len].to_vec();
    while !buf.is_empty() {
        let frame = frontend_frame(&mut buf).unwrap().expect("the capture ends on a message boundary");
        assert_eq!(check_all_prefixes(frame.raw(), frontend_frame), frame);
        decode_frontend(&frame).unwrap_or_else(|e| panic!("{frame:?}: {e}"));
        rebuilt.extend_from_slice(frame.raw());
        frames.push(frame);
    }
    assert_eq!(rebuilt, stream, "forwarding the raw frames changed the stream");
    (startup, frames)
}

fn split_backend(stream: &[u8]) -> Vec<BackendMessage> {
    let mut buf = BytesMut::from(stream);
    let mut out = Vec::new();
    let mut rebuilt = Vec::new();
    while !buf.is_empty() {
        let frame = backend_frame(&mut buf).unwrap().expect("the capture ends on a message boundary");
        assert_eq!(check_all_prefixes(frame.raw(), backend_frame), frame);
        out.push(decode_backend(&frame).unwrap_or_else(|e| panic!("{frame:?}: {e}")));
        rebuilt.extend_from_slice(frame.raw());
    }
    assert_eq!(rebuilt, stream);
    out
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    Frame::new(tag, body).unwrap().raw().to_vec()
}

fn decode_one(bytes: &[u8]) -> Result<FrontendMessage, ProtocolError> {
    let mut buf = BytesMut::from(bytes);
    let frame = frontend_frame(&mut buf)?.expect("a whole frame");
    decode_frontend(&frame)
}

// --- captured sessions ---

#[test]
fn psql_latin1_session_decodes_and_forwards_byte_for_byte() {
    let (startup, frames) = split_frontend(&testdata("psql_latin1.frontend.bin"));
    let Startup::Startup { protocol, params } = &startup else { panic!("{startup:?}") };
    assert_eq!(*protocol, (3, 0));
    let names: Vec<&[u8]> = params.iter().map(|(n, _)| n.as_slice()).collect();
    assert_eq!(names, [&b"user"[..], b"database", b"options", b"application_name", b"client_encoding"]);
    assert_eq!(startup.last_param(b"client_encoding"), Some(&b"LATIN1"[..]));
    assert_eq!(startup.first_param(b"options"), Some(&b"-cDateStyle=ISO"[..]));

    let queries: Vec<Bytes> = frames
        .iter()
        .filter_map(|f| match decode_frontend(f).unwrap() {
            FrontendMessage::Query { sql } => Some(sql),
            _ => None,
        })
        .collect();
    assert_eq!(queries[0], &b"select 1 as one;"[..]);
    // LATIN1 é is the single byte 0xE9, which is not UTF-8: it must come through as it was.
    assert_eq!(
        queries[1],
        &b"select convert_from(convert_to('caf\xe9', 'LATIN1'), 'LATIN1') as word, 'caf\xe9' as lit;"[..]
    );
    assert_eq!(queries[3], &b"select 1/0;"[..]);
    assert_eq!(decode_frontend(frames.last().unwrap()).unwrap(), FrontendMessage::Terminate);
}

#[test]
fn psql_latin1_server_answers_decode() {
    let messages = split_backend(&testdata("psql_latin1.backend.bin"));
    assert_eq!(messages[0], BackendMessage::Authentication(Authentication::Ok));
    assert!(messages.contains(&BackendMessage::ParameterStatus {
        name: Bytes::from_static(b"client_encoding"),
        value: Bytes::from_static(b"LATIN1"),
    }));
    assert!(
        messages
            .iter()
            .any(|m| matches!(m, BackendMessage::BackendKeyData { secret_key, .. } if secret_key.len() == 4))
    );
    // The row of the LATIN1 query: both columns are the bytes c a f 0xE9.
    let latin1_row = messages
        .iter()
        .find_map(|m| match m {
            BackendMessage::DataRow(cells) if cells.len() == 2 => Some(cells.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(latin1_row, vec![Some(Bytes::from_static(b"caf\xe9")), Some(Bytes::from_static(b"caf\xe9"))]);
    let BackendMessage::RowDescription(fields) =
        messages.iter().find(|m| matches!(m, BackendMessage::RowDescription(f) if f.len() == 2)).unwrap()
    else {
        unreachable!()
    };
    assert_eq!(fields[0].name, &b"word"[..]);
    assert_eq!(fields[1].name, &b"lit"[..]);
    assert_eq!(fields[1].type_oid, 25, "text");
    let error = messages
        .iter()
        .find_map(|m| match m {
            BackendMessage::ErrorResponse(e) => Some(e.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(error.code().unwrap(), &b"22012"[..]);
    assert_eq!(error.severity().unwrap(), &b"ERROR"[..]);
    assert_eq!(error.message().unwrap(), &b"division by zero"[..]);
    let statuses: Vec<u8> = messages
        .iter()
        .filter_map(|m| match m {
            BackendMessage::ReadyForQuery { status } => Some(*status),
            _ => None,
        })
        .collect();
    assert_eq!(statuses, b"IIITEII", "idle, select, select, begin, failed, rollback, copy");
    assert!(messages.contains(&BackendMessage::CommandComplete { tag: Bytes::from_static(b"COPY 3") }));
}

#[test]
fn psql_copy_in_session_decodes() {
    let (_, frames) = split_frontend(&testdata("psql_copy_in.frontend.bin"));
    let messages: Vec<FrontendMessage> = frames.iter().map(|f| decode_frontend(f).unwrap()).collect();
    assert!(messages.contains(&FrontendMessage::CopyData(Bytes::from_static(b"1\tcaf\xe9\n2\t\\N\n\\.\n"))));
    assert!(messages.contains(&FrontendMessage::CopyDone));
    let server = split_backend(&testdata("psql_copy_in.backend.bin"));
    assert!(server.contains(&BackendMessage::CommandComplete { tag: Bytes::from_static(b"COPY 2") }));
    assert!(server.contains(&BackendMessage::Other(b'G')), "CopyInResponse is passed through");
}

#[test]
fn pgbench_prepared_session_decodes_extended_protocol() {
    let (_, frames) = split_frontend(&testdata("pgbench_prepared.frontend.bin"));
    let messages: Vec<FrontendMessage> = frames.iter().map(|f| decode_frontend(f).unwrap()).collect();
    assert_eq!(
        messages[0],
        FrontendMessage::Parse {
            name: Bytes::from_static(b"P_0"),
            sql: Bytes::from_static(b"select $1::int + 1 as x, 'caf'::text as t, NULL::int as n;"),
            param_types: vec![],
        }
    );
    assert_eq!(messages[1], FrontendMessage::Sync);
    assert_eq!(
        messages[2],
        FrontendMessage::Bind {
            portal: Bytes::new(),
            statement: Bytes::from_static(b"P_0"),
            param_formats: vec![],
            params: vec![Some(Bytes::from_static(b"1"))],
            result_formats: vec![0],
        }
    );
    assert_eq!(messages[3], FrontendMessage::Describe { kind: ObjectKind::Portal, name: Bytes::new() });
    assert_eq!(messages[4], FrontendMessage::Execute { portal: Bytes::new(), max_rows: 0 });
    assert_eq!(messages[5], FrontendMessage::Sync);

    let server = split_backend(&testdata("pgbench_prepared.backend.bin"));
    let row = server.iter().find(|m| matches!(m, BackendMessage::DataRow(_))).unwrap();
    assert_eq!(
        *row,
        BackendMessage::DataRow(vec![Some(Bytes::from_static(b"2")), Some(Bytes::from_static(b"caf")), None])
    );
}

// --- startup ---

fn startup_bytes(version: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&((8 + body.len()) as i32).to_be_bytes());
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(body);
    out
}

#[test]
fn startup_keeps_order_duplicates_and_raw_bytes() {
    let body = b"user\0alice\0options\0-c a=1\0application_name\0caf\xe9\0options\0-c b=2\0user\0bob\0\0";
    let bytes = startup_bytes(0x0003_0000, body);
    let startup = check_all_prefixes(&bytes, parse_startup);
    let params = vec![
        (b"user".to_vec(), b"alice".to_vec()),
        (b"options".to_vec(), b"-c a=1".to_vec()),
        (b"application_name".to_vec(), b"caf\xe9".to_vec()),
        (b"options".to_vec(), b"-c b=2".to_vec()),
        (b"user".to_vec(), b"bob".to_vec()),
    ];
    assert_eq!(startup, Startup::Startup { protocol: (3, 0), params: params.clone() });
    assert_eq!(startup.last_param(b"user"), Some(&b"bob"[..]), "Postgres uses the last duplicate");
    let mut encoded = BytesMut::new();
    encode_startup(&mut encoded, (3, 0), &params).unwrap();
    assert_eq!(&encoded[..], &bytes[..], "re-encoding is byte-exact");
}

#[test]
fn startup_special_requests() {
    assert_eq!(check_all_prefixes(&startup_bytes(80877103, b""), parse_startup), Startup::SslRequest);
    assert_eq!(check_all_prefixes(&startup_bytes(80877104, b""), parse_startup), Startup::GssEncRequest);
    let cancel = startup_bytes(80877102, &[0, 0, 0x30, 0x39, 1, 2, 3, 4]);
    assert_eq!(
        check_all_prefixes(&cancel, parse_startup),
        Startup::CancelRequest { pid: 12345, secret_key: vec![1, 2, 3, 4] }
    );
    // Protocol 3.2's longer keys.
    let mut long = vec![0, 0, 0, 7];
    long.extend_from_slice(&[9; 32]);
    assert_eq!(
        check_all_prefixes(&startup_bytes(80877102, &long), parse_startup),
        Startup::CancelRequest { pid: 7, secret_key: vec![9; 32] }
    );
    for key_len in [0, 3, 257] {
        let mut body = vec![0, 0, 0, 7];
        body.extend(std::iter::repeat_n(1, key_len));
        let err = parse_startup(&mut BytesMut::from(&startup_bytes(80877102, &body)[..])).unwrap_err();
        assert!(matches!(err, ProtocolError::InvalidSpecialLength { .. }), "{key_len}: {err}");
    }
    let err = parse_startup(&mut BytesMut::from(&startup_bytes(80877103, b"x")[..])).unwrap_err();
    assert_eq!(err.to_string(), "invalid SSLRequest packet length 9");
}

#[test]
fn startup_protocol_versions() {
    let ok = startup_bytes(0x0003_0002, b"user\0a\0\0");
    assert!(matches!(
        parse_startup(&mut BytesMut::from(&ok[..])).unwrap(),
        Some(Startup::Startup { protocol: (3, 2), .. })
    ));
    let old = startup_bytes(0x0002_0000, b"user\0a\0\0");
    let err = parse_startup(&mut BytesMut::from(&old[..])).unwrap_err();
    assert_eq!(err, ProtocolError::UnsupportedProtocol { major: 2, minor: 0 });
}

#[test]
fn startup_lengths_are_bounded() {
    for len in [-1i32, 0, 4, 7, i32::MIN] {
        let err = parse_startup(&mut BytesMut::from(&len.to_be_bytes()[..])).unwrap_err();
        assert_eq!(err, ProtocolError::StartupTooShort(len));
    }
    // Refused on the length alone, before any of the 10 001 bytes arrive.
    let err = parse_startup(&mut BytesMut::from(&10_001i32.to_be_bytes()[..])).unwrap_err();
    assert_eq!(err.to_string(), "startup packet longer than 10000 bytes");
    let err = parse_startup(&mut BytesMut::from(&i32::MAX.to_be_bytes()[..])).unwrap_err();
    assert!(matches!(err, ProtocolError::StartupTooLong(_)));
    // Exactly 10 000 is allowed.
    let value = vec![b'x'; 10_000 - 8 - 5 - 2];
    let mut body = b"user\0".to_vec();
    body.extend_from_slice(&value);
    body.extend_from_slice(b"\0\0");
    let max = startup_bytes(0x0003_0000, &body);
    assert_eq!(max.len(), 10_000);
    assert!(parse_startup(&mut BytesMut::from(&max[..])).unwrap().is_some());
}

#[test]
fn startup_malformed_parameter_lists() {
    for body in [&b"user\0alice\0"[..], b"user\0alice", b"user\0", b"user", b"user\0a\0\0extra", b""] {
        let bytes = startup_bytes(0x0003_0000, body);
        let err = parse_startup(&mut BytesMut::from(&bytes[..])).unwrap_err();
        assert!(matches!(err, ProtocolError::InvalidStartup(_)), "{body:?}: {err:?}");
    }
    // Only the terminator: a valid (if useless) empty list.
    let empty = startup_bytes(0x0003_0000, b"\0");
    assert_eq!(
        parse_startup(&mut BytesMut::from(&empty[..])).unwrap(),
        Some(Startup::Startup { protocol: (3, 0), params: vec![] })
    );
}

// --- framing ---

#[test]
fn negative_and_short_lengths_are_refused() {
    for len in [-1i32, i32::MIN, 0, 3] {
        let mut buf = BytesMut::from(&[b'Q'][..]);
        buf.put_i32(len);
        let err = frontend_frame(&mut buf).unwrap_err();
        assert_eq!(err, ProtocolError::InvalidLength { tag: airlock_data_plane::postgres::protocol::Tag(b'Q'), len });
    }
    let mut buf = BytesMut::from(&b"Q\xff\xff\xff\xff"[..]);
    assert_eq!(frontend_frame(&mut buf).unwrap_err().to_string(), "invalid message length -1 for message 'Q'");
    let mut buf = BytesMut::from(&b"\x01\xff\xff\xff\xfe"[..]);
    assert_eq!(backend_frame(&mut buf).unwrap_err().to_string(), "invalid message length -2 for message 0x01");
}

#[test]
fn huge_lengths_are_refused_before_the_body_arrives() {
    let mut buf = BytesMut::from(&b"Q"[..]);
    buf.put_i32(i32::MAX);
    let err = frontend_frame(&mut buf).unwrap_err();
    assert!(
        matches!(err, ProtocolError::MessageTooLong { len, max, .. } if len == i32::MAX as usize && max == DEFAULT_MAX_FRONTEND_MESSAGE_LEN)
    );
    // Small messages get Postgres's 10 000-byte cap, whatever the large cap.
    let mut buf = BytesMut::from(&b"S"[..]);
    buf.put_i32(10_001);
    assert!(matches!(frontend_frame(&mut buf).unwrap_err(), ProtocolError::MessageTooLong { max: 10_000, .. }));
    // An explicit cap applies to the length field (which counts itself).
    let mut buf = BytesMut::from(&message(b'd', &[0; 96])[..]);
    assert!(parse_frame(&mut buf.clone(), 100).unwrap().is_some());
    assert!(matches!(parse_frame(&mut buf, 99).unwrap_err(), ProtocolError::MessageTooLong { len: 100, max: 99, .. }));
}

// --- frontend messages ---

/// The prototype's pgwire read past a Parse's declared length of 5 and panicked.
#[test]
fn parse_shorter_than_its_fields_is_an_error() {
    let mut bytes = b"P\0\0\0\x05".to_vec();
    bytes.extend_from_slice(b"\0select 1\0\0\0");
    let mut buf = BytesMut::from(&bytes[..]);
    let frame = frontend_frame(&mut buf).unwrap().unwrap();
    assert_eq!(frame.body(), &b"\0"[..], "the frame stops at the declared length");
    let err = decode_frontend(&frame).unwrap_err();
    assert_eq!(err.to_string(), "invalid message 'P': query string not terminated");
    // A declared length of 4: no fields at all.
    assert!(decode_one(b"P\0\0\0\x04").is_err());
}

/// The prototype's pgwire let a Query without its terminator swallow the next
/// message, so the server ran a statement the client never sent.
#[test]
fn query_without_terminator_does_not_swallow_the_next_message() {
    let mut bytes = message(b'Q', b"select 1");
    bytes.extend_from_slice(&message(b'Q', b"drop table t\0"));
    let mut buf = BytesMut::from(&bytes[..]);
    let first = frontend_frame(&mut buf).unwrap().unwrap();
    assert_eq!(decode_frontend(&first).unwrap_err().to_string(), "invalid message 'Q': query string not terminated");
    let second = frontend_frame(&mut buf).unwrap().unwrap();
    assert_eq!(decode_frontend(&second).unwrap(), FrontendMessage::Query { sql: Bytes::from_static(b"drop table t") });
    // The terminator must be the last byte: nothing may hide behind it.
    let err = decode_one(&message(b'Q', b"select 1\0drop table t\0")).unwrap_err();
    assert!(matches!(err, ProtocolError::TrailingBytes { extra: 13, .. }), "{err}");
}

#[test]
fn function_call_is_recognised() {
    // FunctionCall of OID 1598 (random()) with no arguments and a text result.
    let body = [0, 0, 0x06, 0x3e, 0, 0, 0, 0, 0, 0];
    let msg = decode_one(&message(b'F', &body)).unwrap();
    assert_eq!(msg, FrontendMessage::FunctionCall { body: Bytes::copy_from_slice(&body) });
}

#[test]
fn unknown_tags_are_reported() {
    assert_eq!(decode_one(&message(b'V', b"")).unwrap(), FrontendMessage::Unknown(b'V'));
    assert_eq!(decode_one(&message(0, b"abc")).unwrap(), FrontendMessage::Unknown(0));
}

fn bind_body(formats: &[i16], params: &[Option<&[u8]>], result_formats: &[i16]) -> Vec<u8> {
    let mut b = b"portal\0stmt\0".to_vec();
    b.extend_from_slice(&(formats.len() as u16).to_be_bytes());
    formats.iter().for_each(|f| b.extend_from_slice(&f.to_be_bytes()));
    b.extend_from_slice(&(params.len() as u16).to_be_bytes());
    for p in params {
        match p {
            None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(v) => {
                b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                b.extend_from_slice(v);
            }
        }
    }
    b.extend_from_slice(&(result_formats.len() as u16).to_be_bytes());
    result_formats.iter().for_each(|f| b.extend_from_slice(&f.to_be_bytes()));
    b
}

#[test]
fn bind_decodes_nulls_formats_and_binary() {
    let body = bind_body(&[0, 1, 0], &[Some(b"caf\xe9"), None, Some(b"")], &[1]);
    let msg = check_all_prefixes(&message(b'B', &body), frontend_frame);
    let FrontendMessage::Bind { portal, statement, param_formats, params, result_formats } =
        decode_frontend(&msg).unwrap()
    else {
        panic!()
    };
    assert_eq!((&portal[..], &statement[..]), (&b"portal"[..], &b"stmt"[..]));
    assert_eq!(params, vec![Some(Bytes::from_static(b"caf\xe9")), None, Some(Bytes::new())]);
    assert_eq!(param_formats, vec![0, 1, 0]);
    assert_eq!(param_format(&param_formats, 1), 1);
    assert_eq!(param_format(&[1], 2), 1);
    assert_eq!(param_format(&[], 2), 0);
    assert_eq!(result_formats, vec![1]);
}

#[test]
fn bind_malformed() {
    // A parameter length of -2.
    let mut body = bind_body(&[], &[], &[]);
    body.truncate(body.len() - 4);
    body.extend_from_slice(&1u16.to_be_bytes());
    body.extend_from_slice(&(-2i32).to_be_bytes());
    body.extend_from_slice(&0u16.to_be_bytes());
    assert_eq!(
        decode_one(&message(b'B', &body)).unwrap_err().to_string(),
        "invalid message 'B': negative parameter length"
    );
    // A parameter longer than the message.
    let mut body = b"\0\0\0\0\0\x01".to_vec();
    body.extend_from_slice(&1000i32.to_be_bytes());
    body.extend_from_slice(b"short");
    assert!(decode_one(&message(b'B', &body)).is_err());
    // 65 535 parameters declared, none present.
    assert!(decode_one(&message(b'B', b"\0\0\0\0\xff\xff")).is_err());
    // Two formats for three parameters.
    let body = bind_body(&[0, 1], &[None, None, None], &[]);
    assert!(decode_one(&message(b'B', &body)).is_err());
    // Trailing bytes.
    let mut body = bind_body(&[], &[None], &[]);
    body.push(0);
    assert!(matches!(decode_one(&message(b'B', &body)).unwrap_err(), ProtocolError::TrailingBytes { extra: 1, .. }));
}

#[test]
fn parse_with_parameter_types() {
    let mut body = b"s1\0select $1, $2\0\0\x02".to_vec();
    body.extend_from_slice(&23u32.to_be_bytes());
    body.extend_from_slice(&25u32.to_be_bytes());
    let frame = check_all_prefixes(&message(b'P', &body), frontend_frame);
    assert_eq!(
        decode_frontend(&frame).unwrap(),
        FrontendMessage::Parse {
            name: Bytes::from_static(b"s1"),
            sql: Bytes::from_static(b"select $1, $2"),
            param_types: vec![23, 25]
        }
    );
    body.truncate(body.len() - 1);
    assert!(decode_one(&message(b'P', &body)).is_err());
}

#[test]
fn small_messages_decode_strictly() {
    assert_eq!(decode_one(&message(b'S', b"")).unwrap(), FrontendMessage::Sync);
    assert_eq!(decode_one(&message(b'H', b"")).unwrap(), FrontendMessage::Flush);
    assert_eq!(decode_one(&message(b'X', b"")).unwrap(), FrontendMessage::Terminate);
    assert_eq!(decode_one(&message(b'c', b"")).unwrap(), FrontendMessage::CopyDone);
    assert!(matches!(decode_one(&message(b'S', b"x")).unwrap_err(), ProtocolError::TrailingBytes { .. }));
    assert_eq!(
        decode_one(&message(b'E', b"p1\0\0\0\0\x0a")).unwrap(),
        FrontendMessage::Execute { portal: Bytes::from_static(b"p1"), max_rows: 10 }
    );
    assert!(decode_one(&message(b'E', b"p1\0\0\0")).is_err());
    assert_eq!(
        decode_one(&message(b'C', b"Ss1\0")).unwrap(),
        FrontendMessage::Close { kind: ObjectKind::Statement, name: Bytes::from_static(b"s1") }
    );
    assert_eq!(
        decode_one(&message(b'D', b"X\0")).unwrap_err().to_string(),
        "invalid message 'D': target is neither a statement (S) nor a portal (P)"
    );
    assert_eq!(
        decode_one(&message(b'f', b"client gave up\0")).unwrap(),
        FrontendMessage::CopyFail { message: Bytes::from_static(b"client gave up") }
    );
    assert_eq!(decode_one(&message(b'p', b"tok\0")).unwrap(), FrontendMessage::Password(Bytes::from_static(b"tok\0")));
}

#[test]
fn password_and_sasl_bodies() {
    assert_eq!(decode_password(&Bytes::from_static(b"secret\0")).unwrap(), &b"secret"[..]);
    assert!(decode_password(&Bytes::from_static(b"secret")).is_err());
    assert!(decode_password(&Bytes::from_static(b"sec\0ret\0")).is_err());
    let mut buf = BytesMut::new();
    encode::sasl_initial_response(&mut buf, b"SCRAM-SHA-256", b"n,,n=,r=abc").unwrap();
    let frame = parse_frame(&mut buf, 1000).unwrap().unwrap();
    let FrontendMessage::Password(body) = decode_frontend(&frame).unwrap() else { panic!() };
    let (mechanism, data) = decode_sasl_initial_response(&body).unwrap();
    assert_eq!((&mechanism[..], data.as_deref()), (&b"SCRAM-SHA-256"[..], Some(&b"n,,n=,r=abc"[..])));
    assert_eq!(decode_sasl_initial_response(&Bytes::from_static(b"M\0\xff\xff\xff\xff")).unwrap().1, None);
    assert!(decode_sasl_initial_response(&Bytes::from_static(b"M\0\0\0\0\x09short")).is_err());
}

// --- backend messages ---

fn decode_backend_bytes(bytes: &[u8]) -> Result<BackendMessage, ProtocolError> {
    let frame = backend_frame(&mut BytesMut::from(bytes))?.unwrap();
    decode_backend(&frame)
}

#[test]
fn authentication_requests() {
    let auth = |body: &[u8]| decode_backend_bytes(&message(b'R', body));
    assert_eq!(auth(b"\0\0\0\0").unwrap(), BackendMessage::Authentication(Authentication::Ok));
    assert_eq!(auth(b"\0\0\0\x03").unwrap(), BackendMessage::Authentication(Authentication::CleartextPassword));
    assert_eq!(
        auth(b"\0\0\0\x05\x01\x02\x03\x04").unwrap(),
        BackendMessage::Authentication(Authentication::Md5Password { salt: [1, 2, 3, 4] })
    );
    assert!(auth(b"\0\0\0\x05\x01\x02\x03").is_err());
    assert_eq!(
        auth(b"\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0").unwrap(),
        BackendMessage::Authentication(Authentication::Sasl {
            mechanisms: vec![Bytes::from_static(b"SCRAM-SHA-256-PLUS"), Bytes::from_static(b"SCRAM-SHA-256")]
        })
    );
    assert!(auth(b"\0\0\0\x0aSCRAM-SHA-256\0").is_err(), "list not terminated");
    assert_eq!(
        auth(b"\0\0\0\x0br=abc").unwrap(),
        BackendMessage::Authentication(Authentication::SaslContinue { data: Bytes::from_static(b"r=abc") })
    );
    assert_eq!(auth(b"\0\0\0\x07token").unwrap(), BackendMessage::Authentication(Authentication::Unsupported(7)));
    assert!(auth(b"\0\0\0\0\0").is_err(), "trailing byte after AuthenticationOk");
}

#[test]
fn backend_malformed() {
    assert!(decode_backend_bytes(&message(b'K', b"\0\0\0\x01abc")).is_err(), "3-byte key");
    assert!(decode_backend_bytes(&message(b'Z', b"X")).is_err());
    assert!(decode_backend_bytes(&message(b'Z', b"II")).is_err());
    assert!(decode_backend_bytes(&message(b'E', b"SERROR\0")).is_err(), "fields not terminated");
    assert!(decode_backend_bytes(&message(b'D', b"\0\x01\xff\xff\xff\xfe")).is_err(), "length -2");
    assert!(decode_backend_bytes(&message(b'D', b"\0\x02\xff\xff\xff\xff")).is_err(), "one of two columns");
    assert!(decode_backend_bytes(&message(b'T', b"\0\x01name\0\0\0")).is_err());
    assert_eq!(decode_backend_bytes(&message(b'A', b"anything")).unwrap(), BackendMessage::Other(b'A'));
}

// --- encoders ---

#[test]
fn error_response_round_trips() {
    let mut buf = BytesMut::new();
    let report = Report::fatal(sqlstate::INSUFFICIENT_PRIVILEGE, "no active grant for role \"readonly\" on pg-prod")
        .with_detail("grant g-1 expired at 12:00")
        .with_hint("request access with `airlock request`\0injected");
    encode::error_response(&mut buf, &report);
    let frame = check_all_prefixes(&buf, backend_frame);
    let BackendMessage::ErrorResponse(fields) = decode_backend(&frame).unwrap() else { panic!() };
    let codes: Vec<u8> = fields.fields.iter().map(|(c, _)| *c).collect();
    assert_eq!(codes, b"SVCMDH");
    assert_eq!(fields.severity().unwrap(), &b"FATAL"[..]);
    assert_eq!(fields.get(b'S').unwrap(), &b"FATAL"[..]);
    assert_eq!(fields.code().unwrap(), &b"42501"[..]);
    assert_eq!(fields.message().unwrap(), &b"no active grant for role \"readonly\" on pg-prod"[..]);
    assert_eq!(fields.detail().unwrap(), &b"grant g-1 expired at 12:00"[..]);
    assert_eq!(fields.hint().unwrap(), &b"request access with `airlock request`injected"[..], "NUL dropped");

    let mut buf = BytesMut::new();
    encode::notice_response(&mut buf, &Report::notice("waiting for approval"));
    let BackendMessage::NoticeResponse(fields) = decode_backend_bytes(&buf).unwrap() else { panic!() };
    assert_eq!(fields.severity().unwrap(), &b"NOTICE"[..]);
    assert_eq!(Report::new(Severity::Warning, "01000", "w").severity.as_str(), "WARNING");
}

#[test]
fn session_setup_encoders() {
    let mut buf = BytesMut::new();
    encode::authentication_cleartext_password(&mut buf);
    encode::authentication_ok(&mut buf);
    encode::parameter_status(&mut buf, b"client_encoding", b"LATIN1").unwrap();
    encode::backend_key_data(&mut buf, 42, &[1, 2, 3, 4]).unwrap();
    encode::ready_for_query(&mut buf, b'I');
    let mut out = Vec::new();
    while let Some(frame) = backend_frame(&mut buf).unwrap() {
        out.push(decode_backend(&frame).unwrap());
    }
    assert_eq!(
        out,
        vec![
            BackendMessage::Authentication(Authentication::CleartextPassword),
            BackendMessage::Authentication(Authentication::Ok),
            BackendMessage::ParameterStatus {
                name: Bytes::from_static(b"client_encoding"),
                value: Bytes::from_static(b"LATIN1")
            },
            BackendMessage::BackendKeyData { pid: 42, secret_key: vec![1, 2, 3, 4] },
            BackendMessage::ReadyForQuery { status: b'I' },
        ]
    );
    assert!(encode::parameter_status(&mut buf, b"a\0b", b"").is_err());
    assert!(encode::backend_key_data(&mut buf, 1, &[1]).is_err());
    assert!(buf.is_empty(), "a refused message leaves nothing behind");
}

#[test]
fn upstream_encoders() {
    let mut buf = BytesMut::new();
    encode::query(&mut buf, b"select 'caf\xe9'").unwrap();
    encode::password_message(&mut buf, b"md5abc").unwrap();
    encode::sasl_response(&mut buf, b"c=biws,r=x,p=y").unwrap();
    encode::sync(&mut buf);
    encode::terminate(&mut buf);
    let mut out = Vec::new();
    while let Some(frame) = frontend_frame(&mut buf).unwrap() {
        out.push(decode_frontend(&frame).unwrap());
    }
    assert_eq!(
        out,
        vec![
            FrontendMessage::Query { sql: Bytes::from_static(b"select 'caf\xe9'") },
            FrontendMessage::Password(Bytes::from_static(b"md5abc\0")),
            FrontendMessage::Password(Bytes::from_static(b"c=biws,r=x,p=y")),
            FrontendMessage::Sync,
            FrontendMessage::Terminate,
        ]
    );
    assert_eq!(
        encode::query(&mut buf, b"select 1\0; drop table t").unwrap_err(),
        ProtocolError::EmbeddedNul("a query string")
    );
    assert!(encode::password_message(&mut buf, b"a\0").is_err());
    assert!(buf.is_empty());
    assert!(encode_startup(&mut buf, (3, 0), &[(b"user".to_vec(), b"a\0b".to_vec())]).is_err());
    assert!(encode_startup(&mut buf, (3, 0), &[(Vec::new(), b"x".to_vec())]).is_err());
    assert!(encode_startup(&mut buf, (3, 0), &[(b"user".to_vec(), vec![b'x'; 10_000])]).is_err());
    let mut ssl = BytesMut::new();
    encode::encode_ssl_request(&mut ssl);
    assert_eq!(parse_startup(&mut ssl).unwrap(), Some(Startup::SslRequest));
    let mut cancel = BytesMut::new();
    encode::encode_cancel_request(&mut cancel, 99, &[5; 4]).unwrap();
    assert_eq!(parse_startup(&mut cancel).unwrap(), Some(Startup::CancelRequest { pid: 99, secret_key: vec![5; 4] }));
}

#[test]
fn negotiate_protocol_version_encodes() {
    let mut buf = BytesMut::new();
    encode::negotiate_protocol_version(&mut buf, 0, &[b"_pq_.foo"]).unwrap();
    assert_eq!(&buf[..], b"v\0\0\0\x15\0\x03\0\0\0\0\0\x01_pq_.foo\0");
}

// --- fuzz corpus replay ---

/// Replays the fuzz targets' seeds (and any crash inputs added to them) the way
/// the fuzz targets do, so a fixed crash stays fixed in the ordinary test suite.
#[test]
fn fuzz_corpora_replay_without_panic() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let mut seen = 0;
    for target in ["pg_frontend", "pg_backend"] {
        let Ok(dir) = std::fs::read_dir(root.join(target)) else { continue };
        for entry in dir {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let mut buf = BytesMut::from(&data[..]);
            if target == "pg_frontend" {
                let _ = parse_startup(&mut buf);
                while let Ok(Some(frame)) = frontend_frame(&mut buf) {
                    let decoded = decode_frontend(&frame);
                    let body = frame.body();
                    if let Ok(FrontendMessage::Parse { name, sql, .. }) = &decoded {
                        assert_eq!(parse_layout(&body), Some((name.len(), sql.len())), "{}", path.display());
                    } else if frame.tag() == b'P' {
                        assert_eq!(parse_layout(&body), None, "{}", path.display());
                    }
                    if let Ok(FrontendMessage::Bind { portal, statement, .. }) = &decoded {
                        assert_eq!(bind_names(&body), Some((&portal[..], &statement[..])), "{}", path.display());
                    }
                    if let Ok(FrontendMessage::Query { sql } | FrontendMessage::Parse { sql, .. }) = decoded {
                        let mentioned = mentions_deallocation(&sql);
                        assert!(deallocated_name(&sql).is_none() || mentioned, "{}", path.display());
                    }
                }
            } else {
                while let Ok(Some(frame)) = backend_frame(&mut buf) {
                    let _ = decode_backend(&frame);
                }
            }
            seen += 1;
        }
    }
    // As `fuzz/fuzz_targets/scram_login.rs` does, with the RFC 7677 salt.
    use base64::Engine as _;
    let salt = base64::engine::general_purpose::STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
    let salted = scram::SaltedPassword::compute(b"pencil", &salt, 4096);
    let cache = std::sync::Arc::new(scram::SaltCache::default());
    let stored = || scram::Login::stored("pencil", cache.clone()).unwrap();
    let mut first_login = stored();
    let client_first = first_login.first();
    let nonce = std::str::from_utf8(&client_first[b"n,,n=,r=".len()..]).unwrap();
    first_login.respond(format!("r={nonce}x,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096").as_bytes()).unwrap();
    for entry in std::fs::read_dir(root.join("scram_login")).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let (rest, last) = data.split_at(data.iter().position(|b| *b == b'\n').unwrap_or(data.len()));
        let mut login = scram::Login::new(salted.clone());
        let first = [&login.first()[b"n,,n=,r=".len()..], rest].concat();
        let responded = login.respond(&[b"r=", &first[..]].concat());
        if path.ends_with("rfc7677") {
            responded.as_ref().expect("the RFC's server-first message is answered");
        }
        if responded.is_ok() {
            // The RFC's signature signs the RFC's nonce, not this login's.
            assert!(login.verify(last.get(1..).unwrap_or_default()).is_err(), "{}", path.display());
        }
        let _ = scram::Login::new(salted.clone()).respond(&data);
        // A stored password whose cache holds it salted as the RFC says.
        for mut login in [stored(), stored().able_to_bind(), stored().bind(vec![0xab; 32])] {
            let client_first = login.first();
            let at = client_first.windows(3).position(|w| w == b",r=").unwrap();
            let responded = login.respond_if_kept(&[b"r=", &client_first[at + 3..], rest].concat());
            if path.ends_with("rfc7677") {
                responded.as_ref().expect("kept").as_ref().expect("the RFC's server-first message is answered");
            }
            if let Some(Ok(_)) = responded {
                assert!(login.verify(last.get(1..).unwrap_or_default()).is_err(), "{}", path.display());
            }
        }
        assert_eq!(cache.hashed(), 1, "a stored login hashed where it must not");
        seen += 1;
    }
    // As `fuzz/fuzz_targets/pg_admin_login.rs` does: the seeds named for a
    // request the guard must refuse are refused, the others pass.
    for entry in std::fs::read_dir(root.join("pg_admin_login")).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let (&flags, sent) = data.split_first().unwrap();
        let binding = (flags & 4 != 0).then(|| vec![0xab; 32]);
        let mut guard = LoginGuard::new((), flags & 1 != 0, flags & 2 != 0, binding);
        let refused = sent.chunks(usize::from(flags >> 3) + 1).any(|read| guard.inspect(read).is_err());
        let name = path.file_name().unwrap().to_string_lossy();
        let should = ["cleartext_untrusted", "md5_untrusted", "few_iterations"].contains(&&*name);
        assert_eq!(refused, should, "{name}");
        seen += 1;
    }
    // As `fuzz/fuzz_targets/pg_copy_probe.rs` does.
    for entry in std::fs::read_dir(root.join("pg_copy_probe")).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy();
        let outcome = probe_outcome(&data);
        if name == "answered" {
            let (held, ignored) = outcome.expect("the probe's answer is read");
            assert_eq!(ignored, 2, "{name}");
            assert_eq!(held, [&b"Z\0\0\0\x05I"[..], b"N\0\0\0\x0dSNOTICE\0\0"].concat(), "{name}");
        } else {
            assert_eq!(outcome, None, "{name}");
        }
        seen += 1;
    }
    // As `fuzz/fuzz_targets/tls_end_point.rs` does; the seeds are certificates
    // signed with SHA-256 and SHA-384, each bound by its own hash.
    for entry in std::fs::read_dir(root.join("tls_end_point")).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let hash = scram::tls_server_end_point(&data);
        let name = path.file_name().unwrap().to_string_lossy();
        if name.ends_with("sha256") {
            assert_eq!(hash, Some(<sha2::Sha256 as sha2::Digest>::digest(&data).to_vec()), "{name}");
        } else if name.ends_with("sha384") {
            assert_eq!(hash, Some(<sha2::Sha384 as sha2::Digest>::digest(&data).to_vec()), "{name}");
        }
        seen += 1;
    }
    // As `fuzz/fuzz_targets/pg_startup_settings.rs` does.
    for entry in std::fs::read_dir(root.join("pg_startup_settings")).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let mut parts = data.split(|b| *b == 0);
        let mut params = Vec::new();
        while let (Some(name), Some(value)) = (parts.next(), parts.next()) {
            params.push((name.to_vec(), value.to_vec()));
        }
        let made = airlock_data_plane::postgres::startup_settings::settings(&params);
        if path.ends_with("libpq_options") {
            let statements: Vec<_> = made.unwrap().into_iter().map(|s| s.statement).collect();
            assert_eq!(
                statements,
                [
                    "SET role TO 'admin'",
                    "SET search_path TO 'a b'",
                    "SET statement_timeout TO '5s'",
                    "SET search_path TO 'it''s, public'"
                ]
            );
        } else {
            assert!(made.is_err(), "{}", path.display());
        }
        seen += 1;
    }
    assert!(seen > 0, "no seeds found under {}", root.display());
}

/// A probe stepped through a `pg_copy_probe` input, as the fuzz target does:
/// what it hands back once its answer came.
fn probe_outcome(data: &[u8]) -> Option<(Vec<u8>, u64)> {
    let (head, mut rest) = data.split_first_chunk::<5>()?;
    let [from, window, flags, owed, seen] = head.map(u64::from);
    let mut probe = Probe::new(from, window, flags & 1 != 0, flags & 2 != 0, owed);
    let name = probe.name().as_bytes().to_vec();
    while let [tag, len, tail @ ..] = rest {
        let count = usize::from(len & 0x3f);
        let body = if len & 0x40 != 0 {
            rest = tail;
            vec![0; count * 16 * 1024]
        } else {
            let (body, after) = tail.split_at(count.min(tail.len()));
            rest = after;
            body.to_vec()
        };
        let named = if len & 0x80 != 0 { &name[..] } else { &[][..] };
        let declared = u32::try_from(4 + body.len() + named.len()).unwrap();
        let raw = [&[*tag][..], &declared.to_be_bytes(), &body, named].concat();
        match probe.step(*tag, &raw) {
            ProbeStep::Held => {}
            ProbeStep::Lost => return None,
            ProbeStep::Finished => break,
        }
    }
    probe.outcome(seen)
}
