//! A session's timeline read back from a real recorder's store, a page at a
//! time: every entry exactly once whatever the page size, statements whole
//! across chunk and page boundaries, and a live session's unfinished statement
//! held back until it completes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod support;

use airlock_proto::v1::{Frame, frame::Body};
use airlock_recorder::Config;
use airlock_recorder::timeline::{Entry, Kind, decode_all};
use bytes::Bytes;
use support::{Recorder, Session, Stream, send};

/// The captured psql session (see the timeline module's tests), as the session's frames.
fn captured(session: &Session) -> Vec<Frame> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/timeline/psql.frames");
    let bytes = std::fs::read(path).unwrap();
    let mut frames = Vec::new();
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        let at = i64::from_be_bytes(rest[1..9].try_into().unwrap());
        let len = u32::from_be_bytes(rest[9..13].try_into().unwrap()) as usize;
        let data = Bytes::copy_from_slice(&rest[13..13 + len]);
        let body = if rest[0] == b'c' { Body::ClientBytes(data) } else { Body::ServerBytes(data) };
        frames.push(Frame {
            session_id: session.id.to_string(),
            seq: frames.len() as u64 + 1,
            at_unix_micros: at,
            body: Some(body),
        });
        rest = &rest[13 + len..];
    }
    frames
}

async fn store(recorder: &Recorder, session: &Session, frames: &[Frame]) {
    let mut stream = Stream::open(&mut recorder.client().await).await;
    stream.send(session.open()).await;
    for (i, f) in frames.iter().enumerate() {
        stream.send(send(f.clone(), i + 1 == frames.len())).await;
    }
    let last = frames.last().unwrap().seq;
    stream.durable(session, last).await;
}

/// Every page after `after`, `limit` entries at a time, until `next` is null
/// or stops moving (a live session).
async fn all_pages(recorder: &Recorder, session: &Session, limit: usize) -> (Vec<Entry>, bool) {
    let recordings = recorder.recordings();
    let mut after = 0;
    let mut entries = Vec::new();
    loop {
        let page = recordings.timeline(session.tenant, session.id, after, limit).await.unwrap();
        assert!(page.entries.iter().all(|e| e.seq > after), "entries after {after} only");
        entries.extend(page.entries.clone());
        match page.next {
            None => return (entries, page.live),
            Some(next) if next == after && page.entries.is_empty() => return (entries, page.live),
            Some(next) => after = next,
        }
    }
}

#[tokio::test]
async fn every_page_size_hands_out_every_entry_once_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::start(Config { chunk_bytes: 200, ..support::local_config(dir.path()) }).await;
    let session = Session::new();
    let mut frames = captured(&session);
    frames.push(session.end_frame(frames.len() as u64 + 1));
    store(&recorder, &session, &frames).await;
    assert!(support::chunk_files(&recorder.config, &session).len() > 3, "several chunks");

    let whole = decode_all(&frames);
    assert!(whole.len() >= 12, "{whole:?}");
    for limit in [1, 2, 3, 7, 1000] {
        let (paged, live) = all_pages(&recorder, &session, limit).await;
        assert_eq!(paged, whole, "pages of {limit}");
        assert!(!live);
    }
    // The reader hands out the same entries in batches.
    let mut reader = recorder.recordings().timeline_reader(session.tenant, session.id);
    let mut streamed = Vec::new();
    while let Some(batch) = reader.next_entries().await.unwrap() {
        streamed.extend(batch);
    }
    assert_eq!(streamed, whole);
    recorder.stop().await;
}

#[tokio::test]
async fn a_live_session_holds_back_its_unfinished_statement() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::start(support::local_config(dir.path())).await;
    let session = Session::new();
    let frames = captured(&session);
    // Up to the client bytes of the first query, without its answer.
    let first_query = frames.iter().position(|f| matches!(f.body, Some(Body::ClientBytes(_)))).unwrap();
    store(&recorder, &session, &frames[..=first_query]).await;
    let recordings = recorder.recordings();
    let page = recordings.timeline(session.tenant, session.id, 0, 100).await.unwrap();
    assert!(page.entries.is_empty() && page.live);
    assert_eq!(page.next, Some(first_query as u64), "resume before the statement's frame");

    // Its answer arrives: the statement comes out whole, once.
    let mut stream = Stream::open(&mut recorder.client().await).await;
    stream.send(session.open()).await;
    let next = &frames[first_query + 1];
    stream.send(send(next.clone(), true)).await;
    stream.durable(&session, next.seq).await;
    let page = recordings.timeline(session.tenant, session.id, first_query as u64, 100).await.unwrap();
    assert_eq!(page.entries.len(), 1, "{page:?}");
    assert_eq!(page.entries[0].statement.as_deref(), Some("SELECT id, name, email FROM people ORDER BY id"));
    assert_eq!(page.entries[0].kind, Kind::Statement);
    assert_eq!(page.next, Some(next.seq));
    assert!(page.live);
    recorder.stop().await;
}

#[tokio::test]
async fn nothing_stored_is_an_empty_live_timeline() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::start(support::local_config(dir.path())).await;
    let session = Session::new();
    let page = recorder.recordings().timeline(session.tenant, session.id, 0, 10).await.unwrap();
    assert_eq!((page.entries.len(), page.next, page.live), (0, Some(0), true));
    recorder.stop().await;
}
