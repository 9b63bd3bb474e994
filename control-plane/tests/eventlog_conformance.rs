//! One conformance suite for the event log, run against Postgres (a fresh
//! database per test) and SQLite (a fresh file per test). Each case is a plain
//! async fn over a `Backend`; the macro at the bottom makes one test per
//! (case, backend) so they run in parallel and fail by name.

// Helpers outside #[test] fns fail loudly too; clippy's allow-*-in-tests only covers the fns.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

#[macro_use]
mod common;

use std::collections::BTreeMap;

use airlock_control_plane::eventlog::{AppendError, ExpectedVersion};
use airlock_core::chain::{ChainError, GENESIS, Verifier};
use airlock_proto::EventRecord;
use airlock_proto::convert::{decode_event, header};
use common::{Backend, event, events, tenant};

fn seqs(records: &[EventRecord]) -> Vec<u64> {
    records.iter().map(|r| r.seq).collect()
}

fn verify(records: &[EventRecord]) -> Result<u64, ChainError> {
    let mut v = Verifier::new();
    for r in records {
        v.check(&header(r), &r.payload, &r.prev_hash, &r.hash)?;
    }
    Ok(v.verified())
}

fn is_conflict(r: &Result<Vec<EventRecord>, AppendError>, want_actual: u64) -> bool {
    matches!(r, Err(AppendError::Conflict { actual, .. }) if *actual == want_actual)
}

async fn seq_is_assigned_from_one_without_gaps(b: Backend) {
    let log = b.log();
    let t = tenant();
    assert_eq!(log.head(t).await.unwrap(), (0, GENESIS));
    let first = log.append(t, "policy", ExpectedVersion::Any, "alice", &events(1..=3)).await.unwrap();
    let second = log.append(t, "connection/x", ExpectedVersion::Any, "bob", &events(4..=5)).await.unwrap();
    assert_eq!(seqs(&first), [1, 2, 3]);
    assert_eq!(seqs(&second), [4, 5]);
    assert_eq!(first.iter().map(|r| r.stream_version).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(second.iter().map(|r| r.stream_version).collect::<Vec<_>>(), [1, 2]);
    for r in first.iter().chain(&second) {
        assert_eq!(r.tenant_id, t.to_string());
        assert_eq!(r.prev_hash.len(), 32);
        assert_eq!(r.hash.len(), 32);
        assert!(r.occurred_at_unix_ms > 1_600_000_000_000);
        assert_eq!(decode_event(&r.payload).unwrap(), event(r.seq));
    }
    assert_eq!(first[0].actor, "alice");
    assert_eq!(second[0].stream, "connection/x");

    // What read returns is exactly what append returned.
    let stored = log.read(t, 1, 100).await.unwrap();
    assert_eq!(stored, [first, second.clone()].concat());
    let last = second.last().unwrap();
    assert_eq!(log.head(t).await.unwrap(), (5, <[u8; 32]>::try_from(last.hash.as_slice()).unwrap()));
    assert_eq!(log.stream_version(t, "policy").await.unwrap(), 3);
    assert_eq!(log.stream_version(t, "connection/x").await.unwrap(), 2);
    assert_eq!(log.stream_version(t, "nothing").await.unwrap(), 0);

    // An empty append stores nothing and consumes no seq.
    assert!(log.append(t, "policy", ExpectedVersion::Any, "a", &[]).await.unwrap().is_empty());
    assert_eq!(log.head(t).await.unwrap().0, 5);
    assert_eq!(seqs(&log.append(t, "policy", ExpectedVersion::Any, "a", &[event(6)]).await.unwrap()), [6]);
}

async fn expected_versions_are_enforced(b: Backend) {
    let log = b.log();
    let t = tenant();
    let ok = log.append(t, "s", ExpectedVersion::NoStream, "a", &[event(1)]).await.unwrap();
    assert_eq!(ok[0].stream_version, 1);

    let r = log.append(t, "s", ExpectedVersion::NoStream, "a", &[event(2)]).await;
    assert!(is_conflict(&r, 1), "{r:?}");
    let msg = r.unwrap_err().to_string();
    assert_eq!(msg, "stream s is at version 1, expected NoStream");

    let ok = log.append(t, "s", ExpectedVersion::Exactly(1), "a", &events(2..=3)).await.unwrap();
    assert_eq!(ok.iter().map(|r| r.stream_version).collect::<Vec<_>>(), [2, 3]);
    assert!(is_conflict(&log.append(t, "s", ExpectedVersion::Exactly(1), "a", &[event(4)]).await, 3));
    assert!(is_conflict(&log.append(t, "s", ExpectedVersion::Exactly(9), "a", &[event(4)]).await, 3));
    assert!(is_conflict(&log.append(t, "new", ExpectedVersion::Exactly(1), "a", &[event(4)]).await, 0));

    // Refused appends consume no seq and leave the chain intact.
    assert_eq!(log.head(t).await.unwrap().0, 3);
    let ok = log.append(t, "s", ExpectedVersion::Any, "a", &[event(4)]).await.unwrap();
    assert_eq!((ok[0].seq, ok[0].stream_version), (4, 4));
    assert_eq!(verify(&log.read(t, 1, 100).await.unwrap()), Ok(4));
}

async fn concurrent_appends_expecting_one_version_let_exactly_one_win(b: Backend) {
    let log = b.log();
    let t = tenant();
    log.append(t, "s", ExpectedVersion::NoStream, "a", &[event(1)]).await.unwrap();
    for round in 1..=10u64 {
        let attempts: Vec<_> = (0..2)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move {
                    log.append(t, "s", ExpectedVersion::Exactly(round), &format!("writer{i}"), &[event(round + 1)])
                        .await
                })
            })
            .collect();
        let mut won = 0;
        let mut lost = 0;
        for a in attempts {
            match a.await.unwrap() {
                Ok(r) => {
                    assert_eq!(r[0].stream_version, round + 1);
                    won += 1;
                }
                Err(AppendError::Conflict { actual, .. }) => {
                    assert_eq!(actual, round + 1);
                    lost += 1;
                }
                Err(e) => panic!("round {round}: a concurrent writer must see Conflict, got {e:#}"),
            }
        }
        assert_eq!((won, lost), (1, 1), "round {round}");
    }
    assert_eq!(log.head(t).await.unwrap().0, 11);
    assert_eq!(verify(&log.read(t, 1, 100).await.unwrap()), Ok(11));
}

async fn concurrent_appends_to_many_streams_keep_seq_gap_free(b: Backend) {
    let log = b.log();
    let t = tenant();
    let writers = 8u64;
    let appends = 10u64;
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let log = log.clone();
            tokio::spawn(async move {
                for i in 0..appends {
                    let expected = if i == 0 { ExpectedVersion::NoStream } else { ExpectedVersion::Exactly(2 * i) };
                    log.append(t, &format!("stream/{w}"), expected, "a", &events(1..=2)).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let total = writers * appends * 2;
    let all = log.read(t, 1, 10_000).await.unwrap();
    assert_eq!(seqs(&all), (1..=total).collect::<Vec<_>>());
    assert_eq!(verify(&all), Ok(total));
    let mut versions: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for r in &all {
        versions.entry(&r.stream).or_default().push(r.stream_version);
    }
    assert_eq!(versions.len(), writers as usize);
    for v in versions.values() {
        assert_eq!(*v, (1..=2 * appends).collect::<Vec<_>>());
    }
}

async fn read_pages_in_order_from_a_seq(b: Backend) {
    let log = b.log();
    let t = tenant();
    for i in 1..=25 {
        log.append(t, &format!("s{}", i % 3), ExpectedVersion::Any, "a", &[event(i)]).await.unwrap();
    }
    assert_eq!(seqs(&log.read(t, 1, 10).await.unwrap()), (1..=10).collect::<Vec<_>>());
    assert_eq!(seqs(&log.read(t, 11, 10).await.unwrap()), (11..=20).collect::<Vec<_>>());
    assert_eq!(seqs(&log.read(t, 21, 10).await.unwrap()), (21..=25).collect::<Vec<_>>());
    assert!(log.read(t, 26, 10).await.unwrap().is_empty());
    assert_eq!(seqs(&log.read(t, 0, 3).await.unwrap()), [1, 2, 3]);
    assert!(log.read(t, 1, 0).await.unwrap().is_empty());
    assert_eq!(seqs(&log.read(t, 24, u32::MAX).await.unwrap()), [24, 25]);
    // Paging from the middle gives the same records as one read.
    let whole = log.read(t, 1, 100).await.unwrap();
    let mut paged = Vec::new();
    let mut from = 1;
    loop {
        let page = log.read(t, from, 7).await.unwrap();
        let Some(last) = page.last() else { break };
        from = last.seq + 1;
        paged.extend(page);
    }
    assert_eq!(paged, whole);
}

async fn the_chain_verifies_and_a_tampered_payload_is_found_at_its_seq(b: Backend) {
    let log = b.log();
    let t = tenant();
    log.append(t, "a", ExpectedVersion::Any, "a", &events(1..=3)).await.unwrap();
    log.append(t, "b", ExpectedVersion::Any, "a", &events(4..=5)).await.unwrap();
    assert_eq!(verify(&log.read(t, 1, 100).await.unwrap()), Ok(5));

    // Someone with database access rewrites event 3 (a valid event, just different).
    let forged = airlock_proto::convert::encode_event(&event(99));
    let n = b.exec("UPDATE events SET payload = $1 WHERE tenant_id = $2 AND seq = 3", &forged, &t.to_string()).await;
    assert_eq!(n, 1);
    let records = log.read(t, 1, 100).await.unwrap();
    assert_eq!(decode_event(&records[2].payload).unwrap(), event(99));
    let err = verify(&records).unwrap_err();
    assert_eq!(err, ChainError::BadHash { seq: 3 });
    assert_eq!(err.seq(), 3);

    // Deleting an event (another tenant, so the edit above does not mask it)
    // shows up as a gap at the seq after it.
    let t2 = tenant();
    log.append(t2, "a", ExpectedVersion::Any, "a", &events(1..=5)).await.unwrap();
    b.exec("DELETE FROM outbox WHERE $1 = $1 AND tenant_id = $2 AND seq = 4", b"", &t2.to_string()).await;
    b.exec("DELETE FROM events WHERE $1 = $1 AND tenant_id = $2 AND seq = 4", b"", &t2.to_string()).await;
    assert_eq!(verify(&log.read(t2, 1, 100).await.unwrap()), Err(ChainError::Gap { seq: 5, expected: 4 }));
}

async fn tenants_are_separate(b: Backend) {
    let log = b.log();
    let (ta, tb) = (tenant(), tenant());
    log.append(ta, "s", ExpectedVersion::Any, "a", &events(1..=3)).await.unwrap();
    let first_b = log.append(tb, "s", ExpectedVersion::NoStream, "b", &events(1..=2)).await.unwrap();
    // B starts at seq 1 and chains to genesis; its stream "s" is its own.
    assert_eq!(seqs(&first_b), [1, 2]);
    assert_eq!(first_b[0].prev_hash, GENESIS);
    assert_eq!(first_b[0].stream_version, 1);
    log.append(ta, "s", ExpectedVersion::Exactly(3), "a", &[event(4)]).await.unwrap();

    let a = log.read(ta, 1, 100).await.unwrap();
    let bb = log.read(tb, 1, 100).await.unwrap();
    assert_eq!(seqs(&a), [1, 2, 3, 4]);
    assert_eq!(seqs(&bb), [1, 2]);
    assert!(a.iter().all(|r| r.tenant_id == ta.to_string()));
    assert!(bb.iter().all(|r| r.tenant_id == tb.to_string()));
    assert_eq!(verify(&a), Ok(4));
    assert_eq!(verify(&bb), Ok(2));
    assert_eq!(log.head(ta).await.unwrap().0, 4);
    assert_eq!(log.head(tb).await.unwrap().0, 2);
    assert_eq!(log.stream_version(tb, "s").await.unwrap(), 2);
    assert_eq!(log.head(tenant()).await.unwrap(), (0, GENESIS));

    let mut want = vec![ta, tb];
    want.sort();
    assert_eq!(log.tenants().await.unwrap(), want);
}

async fn the_outbox_holds_every_record_until_done(b: Backend) {
    let log = b.log();
    let (ta, tb) = (tenant(), tenant());
    assert!(log.outbox_pending(100).await.unwrap().is_empty());
    let mut appended = Vec::new();
    appended.extend(log.append(ta, "s", ExpectedVersion::Any, "a", &events(1..=2)).await.unwrap());
    appended.extend(log.append(tb, "s", ExpectedVersion::Any, "a", &events(1..=3)).await.unwrap());
    appended.extend(log.append(ta, "s", ExpectedVersion::Any, "a", &events(3..=3)).await.unwrap());

    let pending = log.outbox_pending(100).await.unwrap();
    // Oldest first across tenants: the order of the commits.
    assert_eq!(pending.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>(), appended);
    assert!(pending.windows(2).all(|w| w[0].0 < w[1].0));
    let ids: Vec<i64> = pending.iter().map(|(id, _)| *id).collect();

    let first_two = log.outbox_pending(2).await.unwrap();
    assert_eq!(first_two, pending[..2]);
    log.outbox_done(&ids[..2]).await.unwrap();
    assert_eq!(log.outbox_pending(100).await.unwrap(), pending[2..]);
    log.outbox_done(&[]).await.unwrap();
    // Marking done twice (a relay retrying) is harmless.
    log.outbox_done(&ids).await.unwrap();
    log.outbox_done(&ids).await.unwrap();
    assert!(log.outbox_pending(100).await.unwrap().is_empty());
    // The events themselves stay.
    assert_eq!(log.read(ta, 1, 100).await.unwrap().len(), 3);
}

async fn a_unique_violation_from_another_writer_is_a_conflict(b: Backend) {
    let log = b.log();
    let t = tenant();
    let first = log.append(t, "s", ExpectedVersion::Any, "a", &[event(1)]).await.unwrap();
    // A writer that bypassed the head lock already stored seq 2 and "s" version 2.
    b.exec(
        "INSERT INTO events (tenant_id, seq, stream, stream_version, occurred_at_unix_ms, actor, payload, \
         prev_hash, hash) VALUES ($2, 2, 'other', 1, 0, 'rogue', $1, $1, $1)",
        &first[0].hash,
        &t.to_string(),
    )
    .await;
    let r = log.append(t, "s", ExpectedVersion::Exactly(1), "a", &[event(2)]).await;
    assert!(matches!(r, Err(AppendError::Conflict { .. })), "{r:?}");
}

on_both_backends!(
    seq_is_assigned_from_one_without_gaps,
    expected_versions_are_enforced,
    concurrent_appends_expecting_one_version_let_exactly_one_win,
    concurrent_appends_to_many_streams_keep_seq_gap_free,
    read_pages_in_order_from_a_seq,
    the_chain_verifies_and_a_tampered_payload_is_found_at_its_seq,
    tenants_are_separate,
    the_outbox_holds_every_record_until_done,
    a_unique_violation_from_another_writer_is_a_conflict,
);
