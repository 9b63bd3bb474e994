//! The outbox relay against a real JetStream (each test its own stream) and a
//! real Postgres: every committed record reaches the bus, in each tenant's
//! order, at least once; duplicates are dropped by JetStream's dedup and
//! absorbed by consumers applying by `seq`; crashes and bus outages lose nothing.

// Helpers outside #[test] fns fail loudly too; clippy's allow-*-in-tests only covers the fns.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use airlock_control_plane::eventlog::{EventLog, ExpectedVersion};
use airlock_control_plane::relay::{Relay, RelayMetrics};
use airlock_core::TenantState;
use airlock_core::state::Applied;
use airlock_proto::EventRecord;
use airlock_proto::bus::{Bus, NatsBus, NatsOptions, RecordKey, RecordStream, StartAt};
use airlock_proto::convert::decode_event;
use airlock_testkit::eventually;
use airlock_testkit::nats::{StreamCleanup, nats_url, unique_prefix};
use common::{Backend, events, tenant};
use futures::StreamExt as _;
use prost::Message as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

struct Env {
    backend: Backend,
    bus: Arc<NatsBus>,
    _cleanup: StreamCleanup,
}

impl Env {
    async fn new() -> Self {
        let backend = Backend::postgres().await;
        let key = RecordKey::from_worker_token("worker-secret");
        let options =
            NatsOptions { max_age: Duration::from_secs(3600), ..NatsOptions::new(nats_url(), unique_prefix(), key) };
        let bus = NatsBus::connect(&options).await.unwrap();
        let cleanup = StreamCleanup(bus.stream_name().to_owned());
        Self { backend, bus: Arc::new(bus), _cleanup: cleanup }
    }

    fn log(&self) -> Arc<dyn EventLog> {
        self.backend.log()
    }

    fn start_relay(&self, bus: Arc<dyn Bus>) -> (RelayMetrics, CancellationToken, JoinHandle<()>) {
        let relay = Relay::new(self.log(), bus, self.backend.store.notify());
        let metrics = relay.metrics();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(relay.run(cancel.clone()));
        (metrics, cancel, task)
    }

    async fn wait_drained(&self) {
        let log = self.log();
        eventually(WAIT, "the outbox to drain", || {
            let log = log.clone();
            async move { log.outbox_pending(1).await.unwrap().is_empty() }
        })
        .await;
    }

    /// How many messages JetStream holds: what dedup let through.
    async fn stored_messages(&self) -> u64 {
        let client = async_nats::connect(nats_url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream(self.bus.stream_name()).await.unwrap();
        stream.info().await.unwrap().state.messages
    }
}

/// Appends `per_tenant` events to each of `tenants` tenants, interleaved, in
/// appends of one to three events. Returns every stored record.
async fn append_interleaved(log: &Arc<dyn EventLog>, tenants: usize, per_tenant: u64) -> Vec<EventRecord> {
    let ids: Vec<_> = (0..tenants).map(|_| tenant()).collect();
    let mut next = vec![1u64; tenants];
    let mut out = Vec::new();
    let mut round = 0u64;
    while next.iter().any(|n| *n <= per_tenant) {
        for (i, t) in ids.iter().enumerate() {
            if next[i] > per_tenant {
                continue;
            }
            let take = (1 + (round + i as u64) % 3).min(per_tenant - next[i] + 1);
            let batch = events(next[i]..=next[i] + take - 1);
            out.extend(log.append(*t, "policy", ExpectedVersion::Any, "test", &batch).await.unwrap());
            next[i] += take;
        }
        round += 1;
    }
    out
}

/// Reads exactly `n` records, failing if they do not come within `WAIT`.
async fn take(stream: &mut RecordStream, n: usize) -> Vec<EventRecord> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match tokio::time::timeout(WAIT, stream.next()).await {
            Ok(Some(r)) => out.push(r),
            Ok(None) => panic!("the bus subscription ended after {} of {n} records", out.len()),
            Err(_) => panic!("only {} of {n} records arrived within {WAIT:?}", out.len()),
        }
    }
    out
}

/// A data-plane-style consumer: per-tenant state, applied idempotently by seq.
#[derive(Default)]
struct Consumer {
    states: BTreeMap<String, TenantState>,
    applied: BTreeMap<String, Vec<u64>>,
    duplicates: usize,
}

impl Consumer {
    fn apply(&mut self, r: &EventRecord) {
        let event = decode_event(&r.payload).unwrap();
        let state = self.states.entry(r.tenant_id.clone()).or_default();
        match state.apply_at(r.seq, &event).unwrap() {
            Applied::Applied => self.applied.entry(r.tenant_id.clone()).or_default().push(r.seq),
            Applied::Duplicate => self.duplicates += 1,
        }
    }

    /// Each tenant's seqs were applied exactly once, 1..=n, in order.
    fn assert_applied_once(&self, want: &BTreeMap<String, u64>) {
        assert_eq!(self.applied.len(), want.len());
        for (t, n) in want {
            assert_eq!(self.applied[t], (1..=*n).collect::<Vec<_>>(), "tenant {t}");
            assert_eq!(self.states[t].seq, *n);
        }
    }
}

fn heads(records: &[EventRecord]) -> BTreeMap<String, u64> {
    let mut heads = BTreeMap::new();
    for r in records {
        let h = heads.entry(r.tenant_id.clone()).or_insert(0);
        *h = (*h).max(r.seq);
    }
    heads
}

fn per_tenant(records: &[EventRecord]) -> BTreeMap<String, Vec<EventRecord>> {
    let mut m: BTreeMap<String, Vec<EventRecord>> = BTreeMap::new();
    for r in records {
        m.entry(r.tenant_id.clone()).or_default().push(r.clone());
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_record_reaches_the_bus_in_each_tenants_order() {
    let env = Env::new().await;
    let log = env.log();
    let (metrics, cancel, task) = env.start_relay(env.bus.clone());
    let appended = append_interleaved(&log, 4, 25).await;
    assert_eq!(appended.len(), 100);

    let mut sub = env.bus.subscribe(StartAt::Beginning).await.unwrap();
    let received = take(&mut sub, appended.len()).await;
    // Exactly the stored records, byte for byte, and each tenant's in seq order.
    assert_eq!(per_tenant(&received), per_tenant(&appended));
    let mut consumer = Consumer::default();
    received.iter().for_each(|r| consumer.apply(r));
    consumer.assert_applied_once(&heads(&appended));
    assert_eq!(consumer.duplicates, 0);

    env.wait_drained().await;
    assert_eq!(metrics.published(), 100);
    assert_eq!(metrics.failures(), 0);

    // A later append wakes the relay (commit signal) and arrives as well.
    let t = tenant();
    let more = log.append(t, "s", ExpectedVersion::Any, "test", &events(1..=2)).await.unwrap();
    assert_eq!(take(&mut sub, 2).await, more);

    cancel.cancel();
    task.await.unwrap();
    assert_eq!(env.stored_messages().await, 102);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicates_are_dropped_by_jetstream_and_absorbed_by_consumers() {
    let env = Env::new().await;
    let log = env.log();
    let (_, cancel, task) = env.start_relay(env.bus.clone());
    let appended = append_interleaved(&log, 2, 10).await;
    env.wait_drained().await;
    assert_eq!(env.stored_messages().await, 20);

    // Publishing the same records again (a relay retrying) is deduplicated by
    // JetStream on Nats-Msg-Id = tenant:seq.
    for r in &appended[..5] {
        env.bus.publish(r).await.unwrap();
    }
    assert_eq!(env.stored_messages().await, 20);

    // A duplicate that gets past dedup (re-sent after the dedup window) is
    // absorbed by the consumer: applied once, reported as Duplicate.
    let client = async_nats::connect(nats_url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let dup = &appended[3];
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "after-the-window");
    // Tagged, as the relay tags what it publishes.
    let tag = env.bus.record_key().tag(&dup.encode_to_vec());
    headers.insert("Airlock-Record-Tag", tag.as_str());
    js.publish_with_headers(env.bus.subject(&dup.tenant_id), headers, dup.encode_to_vec().into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(env.stored_messages().await, 21);

    let mut sub = env.bus.subscribe(StartAt::Beginning).await.unwrap();
    let received = take(&mut sub, 21).await;
    let mut consumer = Consumer::default();
    received.iter().for_each(|r| consumer.apply(r));
    assert_eq!(consumer.duplicates, 1);
    consumer.assert_applied_once(&heads(&appended));

    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_consumer_restarted_from_a_seq_ends_at_the_same_state() {
    let env = Env::new().await;
    let log = env.log();
    let (_, cancel, task) = env.start_relay(env.bus.clone());
    let appended = append_interleaved(&log, 3, 12).await;

    // The first consumer sees everything from the beginning.
    let mut first_sub = env.bus.subscribe(StartAt::Beginning).await.unwrap();
    let mut first = Consumer::default();
    take(&mut first_sub, appended.len()).await.iter().for_each(|r| first.apply(r));

    // The second restarts from a snapshot at seq 5 of every tenant (its known
    // seq), then replays the bus from the beginning: what it already has is
    // skipped as Duplicate, the rest applied.
    let mut second = Consumer::default();
    for t in log.tenants().await.unwrap() {
        for r in log.read(t, 1, 5).await.unwrap() {
            second.apply(&r);
        }
    }
    let mut second_sub = env.bus.subscribe(StartAt::Beginning).await.unwrap();
    take(&mut second_sub, appended.len()).await.iter().for_each(|r| second.apply(r));
    assert_eq!(second.duplicates, 3 * 5);
    assert_eq!(second.states, first.states);

    // Both keep following live appends and stay equal.
    let t = log.tenants().await.unwrap()[0];
    log.append(t, "policy", ExpectedVersion::Any, "test", &events(13..=14)).await.unwrap();
    take(&mut first_sub, 2).await.iter().for_each(|r| first.apply(r));
    take(&mut second_sub, 2).await.iter().for_each(|r| second.apply(r));
    assert_eq!(second.states, first.states);
    assert_eq!(first.states[&t.to_string()].seq, 14);

    cancel.cancel();
    task.await.unwrap();
}

/// A bus that "crashes" the relay after `after` publishes: it cancels the relay
/// and never returns from the next publish, so the records already published
/// are never marked done, exactly as if the process died between publish and
/// `outbox_done`.
struct CrashAfter {
    inner: Arc<NatsBus>,
    remaining: AtomicU32,
    crash: CancellationToken,
}

#[async_trait::async_trait]
impl Bus for CrashAfter {
    async fn publish(&self, record: &EventRecord) -> anyhow::Result<()> {
        if self.remaining.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_err() {
            self.crash.cancel();
            std::future::pending::<()>().await;
        }
        self.inner.publish(record).await
    }

    async fn subscribe(&self, start: StartAt) -> anyhow::Result<RecordStream> {
        self.inner.subscribe(start).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_that_crashed_mid_batch_republishes_and_nothing_is_lost_or_applied_twice() {
    let env = Env::new().await;
    let log = env.log();
    let appended = append_interleaved(&log, 3, 10).await;

    let crash = CancellationToken::new();
    let crashing = Arc::new(CrashAfter { inner: env.bus.clone(), remaining: AtomicU32::new(12), crash: crash.clone() });
    let relay = Relay::new(log.clone(), crashing, env.backend.store.notify());
    let metrics = relay.metrics();
    relay.run(crash).await;
    // The batch never completed: nothing counts as published, though 12 reached JetStream.
    assert_eq!(metrics.published(), 0);
    assert_eq!(env.stored_messages().await, 12);
    // Nothing was marked done: the whole batch is still pending.
    assert_eq!(log.outbox_pending(1000).await.unwrap().len(), 30);

    // A fresh relay publishes the batch again; JetStream drops the 12 it has.
    let (metrics, cancel, task) = env.start_relay(env.bus.clone());
    env.wait_drained().await;
    assert_eq!(metrics.published(), 30);
    assert_eq!(env.stored_messages().await, 30);

    let mut sub = env.bus.subscribe(StartAt::Beginning).await.unwrap();
    let mut consumer = Consumer::default();
    take(&mut sub, 30).await.iter().for_each(|r| consumer.apply(r));
    consumer.assert_applied_once(&heads(&appended));
    assert_eq!(consumer.duplicates, 0);

    cancel.cancel();
    task.await.unwrap();
}

/// A bus that refuses its first `fail` publishes, like NATS during an outage.
struct Flaky {
    inner: Arc<NatsBus>,
    fail: AtomicU32,
}

#[async_trait::async_trait]
impl Bus for Flaky {
    async fn publish(&self, record: &EventRecord) -> anyhow::Result<()> {
        if self.fail.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            anyhow::bail!("NATS is down (test)");
        }
        self.inner.publish(record).await
    }

    async fn subscribe(&self, start: StartAt) -> anyhow::Result<RecordStream> {
        self.inner.subscribe(start).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_relay_retries_while_the_bus_fails_and_loses_nothing() {
    let env = Env::new().await;
    let log = env.log();
    let flaky = Arc::new(Flaky { inner: env.bus.clone(), fail: AtomicU32::new(4) });
    let (metrics, cancel, task) = env.start_relay(flaky.clone());
    let appended = append_interleaved(&log, 2, 15).await;

    env.wait_drained().await;
    assert_eq!(flaky.fail.load(Ordering::SeqCst), 0);
    assert_eq!(metrics.failures(), 4);
    assert_eq!(metrics.published(), 30);

    let mut sub = env.bus.subscribe(StartAt::Beginning).await.unwrap();
    let received = take(&mut sub, 30).await;
    assert_eq!(per_tenant(&received), per_tenant(&appended));
    assert_eq!(env.stored_messages().await, 30);

    cancel.cancel();
    task.await.unwrap();
}

/// NATS is not trusted to say what the log holds: a message on the bus's
/// subjects that a control plane with this worker token did not tag never
/// reaches a subscriber, and the records after it still do.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_the_control_plane_did_not_tag_never_reach_subscribers() {
    let env = Env::new().await;
    let log = env.log();
    let t = tenant();
    let genuine = log.append(t, "s", ExpectedVersion::Any, "test", &events(1..=2)).await.unwrap();
    let mut sub = env.bus.subscribe(StartAt::Beginning).await.unwrap();

    // Someone who can publish on NATS: a record with no tag, one tagged under
    // another worker token, and a genuine tag over bytes changed after.
    let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.unwrap());
    let subject = env.bus.subject(&genuine[0].tenant_id);
    let forged = EventRecord { actor: "forger".into(), ..genuine[0].clone() }.encode_to_vec();
    let other = RecordKey::from_worker_token("another-installation");
    let ours = env.bus.record_key().clone();
    // Another installation on the same NATS with the same worker token.
    let staging = RecordKey::from_worker_token("worker-secret").bound_to("staging");
    let tagged = |tag: String| {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Airlock-Record-Tag", tag.as_str());
        headers
    };
    let sends = [
        (async_nats::HeaderMap::new(), forged.clone()),
        (tagged(other.tag(&forged)), forged.clone()),
        (tagged(staging.tag(&genuine[0].encode_to_vec())), genuine[0].encode_to_vec()),
        (tagged(ours.tag(&genuine[0].encode_to_vec())), forged.clone()),
        (tagged("not hex".into()), forged.clone()),
    ];
    for (headers, payload) in sends {
        js.publish_with_headers(subject.clone(), headers, payload.into()).await.unwrap().await.unwrap();
    }
    // Published as the relay publishes them.
    for record in &genuine {
        env.bus.publish(record).await.unwrap();
    }
    // What the forger sent comes first on the stream and is dropped.
    assert_eq!(take(&mut sub, 2).await, genuine);
    assert_eq!(env.stored_messages().await, 7);
    // The tag is what the control plane's key makes, and nothing else's.
    assert!(ours.verify(&forged, &ours.tag(&forged)));
    assert!(!other.verify(&forged, &ours.tag(&forged)));
}

/// Cancel requests pass between workers over core NATS, tagged with a key of
/// their own: one worker's reaches another's subscription, while one with no
/// tag, or tagged as a record would be, is dropped.
#[tokio::test]
async fn cancel_requests_pass_between_workers_and_forged_ones_do_not() {
    use airlock_proto::bus::CancelRequest;
    let options = NatsOptions::new(nats_url(), unique_prefix(), RecordKey::from_worker_token("worker-secret"));
    let sender = NatsBus::connect(&options).await.unwrap();
    let _cleanup = StreamCleanup(sender.stream_name().to_owned());
    let receiver = NatsBus::connect(&options).await.unwrap();
    let mut requests = receiver.subscribe_cancels().await.unwrap();

    // Someone who can publish on NATS, before the genuine request.
    let raw = async_nats::connect(nats_url()).await.unwrap();
    let subject = format!("{}.cancels", options.prefix);
    let payload = bytes::Bytes::from_static(&[0, 0, 0, 7, 1, 2, 3, 4]);
    let mut as_a_record = async_nats::HeaderMap::new();
    as_a_record.insert("Airlock-Record-Tag", receiver.record_key().tag(&payload).as_str());
    raw.publish(subject.clone(), payload.clone()).await.unwrap();
    raw.publish_with_headers(subject, as_a_record, payload).await.unwrap();
    raw.flush().await.unwrap();

    let genuine = CancelRequest { pid: 42, key: [9, 8, 7, 6] };
    sender.publish_cancel(genuine).await.unwrap();
    let got = tokio::time::timeout(WAIT, requests.next()).await.unwrap().unwrap();
    assert_eq!(got, genuine);
}
