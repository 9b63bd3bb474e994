//! Tampering with a stored recording: `verify` names the first bad chunk (a
//! changed byte, a deleted chunk) or the signature (a changed manifest); a
//! session that never ended verifies its chain and says it is unsigned.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod support;

use airlock_recorder::{Config, Report, Signature};
use support::{Recorder, Session, Stream, send};

/// A closed session of several chunks, on a stopped recorder's directory.
async fn recorded(dir: &std::path::Path, end: bool) -> (Recorder, Session, Vec<std::path::PathBuf>) {
    let recorder = Recorder::start(Config { chunk_bytes: 300, ..support::local_config(dir) }).await;
    let session = Session::new();
    let mut stream = Stream::open(&mut recorder.client().await).await;
    stream.send(session.open()).await;
    stream.send_all(session.frames(1, 30)).await;
    stream.durable(&session, 30).await;
    if end {
        stream.send(send(session.end_frame(31), false)).await;
        assert!(stream.durable(&session, 31).await.closed);
    }
    drop(stream);
    let chunks = support::chunk_files(&recorder.config, &session);
    assert!(chunks.len() >= 5, "{} chunks", chunks.len());
    (recorder, session, chunks)
}

async fn verify(recorder: &Recorder, session: &Session) -> Report {
    recorder.recordings().verify(session.tenant, session.id, &recorder.started.public_key).await.unwrap()
}

#[tokio::test]
async fn one_changed_byte_names_its_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let (recorder, session, chunks) = recorded(dir.path(), true).await;
    assert!(verify(&recorder, &session).await.is_valid());

    // A byte in the middle of chunk 2's compressed frames, then one in chunk 3's header.
    let mut bytes = std::fs::read(&chunks[2]).unwrap();
    let at = 65 + (bytes.len() - 65) / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&chunks[2], &bytes).unwrap();
    let report = verify(&recorder, &session).await;
    assert!(!report.is_valid());
    let bad = report.first_bad_chunk.as_ref().expect("a bad chunk");
    assert_eq!(bad.index, 2, "{report}");
    assert!(bad.key.ends_with("/chunks/0000000002"), "{}", bad.key);
    assert_eq!(report.chunks, 2, "chunks 0 and 1 are good");
    assert!(matches!(report.signature, Signature::Valid { .. }), "the manifest itself is untouched");
    recorder.stop().await;
}

#[tokio::test]
async fn a_changed_header_field_names_its_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let (recorder, session, chunks) = recorded(dir.path(), true).await;
    // The last byte of the previous-hash field of chunk 3.
    let mut bytes = std::fs::read(&chunks[3]).unwrap();
    bytes[60] ^= 0x80;
    std::fs::write(&chunks[3], &bytes).unwrap();
    let report = verify(&recorder, &session).await;
    let bad = report.first_bad_chunk.expect("a bad chunk");
    assert_eq!(bad.index, 3);
    assert!(bad.reason.contains("previous-hash"), "{}", bad.reason);
    recorder.stop().await;
}

#[tokio::test]
async fn a_deleted_chunk_names_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    let (recorder, session, chunks) = recorded(dir.path(), true).await;
    std::fs::remove_file(&chunks[1]).unwrap();
    let report = verify(&recorder, &session).await;
    let bad = report.first_bad_chunk.as_ref().expect("a bad chunk");
    assert_eq!(bad.index, 1);
    assert!(bad.key.ends_with("/chunks/0000000001"), "{}", bad.key);
    assert!(bad.reason.starts_with("missing"), "{}", bad.reason);
    assert!(bad.reason.contains("chunk 0 to chunk 2"), "{}", bad.reason);
    assert_eq!(report.chunks, 1);
    recorder.stop().await;
}

#[tokio::test]
async fn a_truncated_recording_is_caught_by_its_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let (recorder, session, chunks) = recorded(dir.path(), true).await;
    let last = chunks.len() as u64 - 1;
    std::fs::remove_file(chunks.last().unwrap()).unwrap();
    let report = verify(&recorder, &session).await;
    let bad = report.first_bad_chunk.as_ref().expect("a bad chunk");
    assert_eq!(bad.index, last, "{report}");
    assert!(bad.reason.contains("listed in the signed manifest"), "{}", bad.reason);
    recorder.stop().await;
}

#[tokio::test]
async fn a_changed_manifest_fails_its_signature() {
    let dir = tempfile::tempdir().unwrap();
    let (recorder, session, _) = recorded(dir.path(), true).await;
    let path = support::manifest_file(&recorder.config, &session);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"ci-job-42\""));
    std::fs::write(&path, text.replace("\"ci-job-42\"", "\"someone-else\"")).unwrap();
    let report = verify(&recorder, &session).await;
    assert!(!report.is_valid());
    match &report.signature {
        Signature::Invalid { reason } => assert!(reason.contains("does not verify"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(report.chain_intact(), "the chunks themselves are untouched");

    // Verified against another key: refused by key id.
    let other = airlock_recorder::Signer::new(ed25519_dalek::SigningKey::from_bytes(&[9; 32]));
    std::fs::write(&path, text).unwrap();
    let report = recorder.recordings().verify(session.tenant, session.id, &other.verifying_key()).await.unwrap();
    assert!(matches!(&report.signature, Signature::Invalid { reason } if reason.contains("not by the trusted key")));
    recorder.stop().await;
}

#[tokio::test]
async fn an_open_session_verifies_its_chain_unsigned() {
    let dir = tempfile::tempdir().unwrap();
    let (recorder, session, chunks) = recorded(dir.path(), false).await;
    let report = verify(&recorder, &session).await;
    assert!(report.chain_intact(), "{report}");
    assert!(!report.is_valid());
    assert_eq!(report.signature.to_string(), "unsigned: session not closed");
    assert_eq!(report.chunks, chunks.len() as u64);
    assert_eq!(report.last_seq, 30);

    // Without a manifest, a chunk's hash is checked by the link in the next one.
    let mut bytes = std::fs::read(&chunks[1]).unwrap();
    bytes[20] ^= 0x01; // chunk 1's first seq
    std::fs::write(&chunks[1], &bytes).unwrap();
    let report = verify(&recorder, &session).await;
    assert_eq!(report.first_bad_chunk.unwrap().index, 1);
    recorder.stop().await;
}
