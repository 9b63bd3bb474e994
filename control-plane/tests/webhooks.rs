//! Outbound webhooks on both databases, end to end: events appended to the log
//! reach a real HTTP receiver that checks the Standard Webhooks signature and
//! drops repeats by `webhook-id`, as a careful receiver would.

// Helpers outside #[test] fns fail loudly too; clippy's allow-*-in-tests only covers the fns.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

#[macro_use]
mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_control_plane::eventlog::{EventLog, ExpectedVersion};
use airlock_control_plane::notify::webhooks::{self, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP};
use airlock_control_plane::notify::{self, DeliveryHistory, DeliveryState, Notifier, RetryPolicy, webhook_secret_name};
use airlock_control_plane::store::Store;
use airlock_core::event::stream;
use airlock_core::integration::Webhook;
use airlock_core::{Event, IssuerId, TenantId, WebhookId};
use airlock_testkit::eventually;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::Backend;
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

/// Retries a few milliseconds apart, so a failing delivery settles quickly.
fn fast_retries(retries: usize) -> RetryPolicy {
    RetryPolicy { delays: vec![Duration::from_millis(20); retries] }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Accept,
    /// 500 to the first request of each message, 200 after.
    RefuseFirst,
    RefuseAll,
    /// Takes the request and never answers.
    Hang,
}

struct Request {
    msg_id: String,
    status: u16,
}

struct Seen {
    mode: Mode,
    /// Every request, in arrival order.
    requests: Vec<Request>,
    /// The deduplicated messages accepted, by `webhook-id`.
    accepted: BTreeMap<String, Value>,
    /// Requests whose signature did not verify.
    forged: usize,
    refused_once: HashSet<String>,
}

/// An HTTP endpoint on 127.0.0.1 with its own signing secret.
#[derive(Clone)]
struct Receiver {
    url: String,
    secret: Vec<u8>,
    seen: Arc<Mutex<Seen>>,
}

impl Receiver {
    async fn start(mode: Mode) -> Receiver {
        let secret = webhooks::generate_secret();
        let seen = Arc::new(Mutex::new(Seen {
            mode,
            requests: Vec::new(),
            accepted: BTreeMap::new(),
            forged: 0,
            refused_once: HashSet::new(),
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let receiver = Receiver { url, secret, seen };
        let app = axum::Router::new().route("/hook", axum::routing::post(receive)).with_state(receiver.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        receiver
    }

    fn set_mode(&self, mode: Mode) {
        self.seen.lock().unwrap().mode = mode;
    }

    fn accepted_ids(&self) -> BTreeSet<String> {
        self.seen.lock().unwrap().accepted.keys().cloned().collect()
    }

    fn accepted(&self, msg_id: &str) -> Option<Value> {
        self.seen.lock().unwrap().accepted.get(msg_id).cloned()
    }

    /// (webhook-id, status answered) of every request, in order.
    fn requests(&self) -> Vec<(String, u16)> {
        self.seen.lock().unwrap().requests.iter().map(|r| (r.msg_id.clone(), r.status)).collect()
    }

    /// How many requests of `msg_id` were answered 2xx.
    fn accepted_count(&self, msg_id: &str) -> usize {
        self.requests().iter().filter(|(id, status)| id == msg_id && *status == 200).count()
    }

    fn forged(&self) -> usize {
        self.seen.lock().unwrap().forged
    }
}

async fn receive(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    match answer(&receiver, &headers, &body) {
        Some(status) => status,
        None => std::future::pending().await,
    }
}

/// What the receiver answers, or `None` to hang.
fn answer(receiver: &Receiver, headers: &HeaderMap, body: &[u8]) -> Option<StatusCode> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let (id, timestamp, signature) = (header(HEADER_ID), header(HEADER_TIMESTAMP), header(HEADER_SIGNATURE));
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let checked =
        webhooks::verify(&receiver.secret, (&id, &timestamp, &signature), body, now, webhooks::DEFAULT_TOLERANCE_SECS);
    let mut guard = receiver.seen.lock().unwrap();
    let seen = &mut *guard;
    if checked.is_err() {
        seen.forged += 1;
        return Some(StatusCode::UNAUTHORIZED);
    }
    let status = match seen.mode {
        Mode::Hang => {
            seen.requests.push(Request { msg_id: id, status: 0 });
            return None;
        }
        Mode::RefuseAll => StatusCode::INTERNAL_SERVER_ERROR,
        Mode::RefuseFirst if seen.refused_once.insert(id.clone()) => StatusCode::INTERNAL_SERVER_ERROR,
        Mode::RefuseFirst | Mode::Accept => {
            let body: Value = serde_json::from_slice(body).unwrap();
            seen.accepted.entry(id.clone()).or_insert(body);
            StatusCode::OK
        }
    };
    seen.requests.push(Request { msg_id: id, status: status.as_u16() });
    Some(status)
}

/// A tenant's log, appended to the way the control plane does, with the signal
/// the control plane gives after each append.
struct Tenant {
    id: TenantId,
    log: Arc<dyn EventLog>,
    store: Store,
    appended: watch::Sender<u64>,
}

impl Tenant {
    async fn create(b: &Backend) -> Tenant {
        let (appended, _) = watch::channel(0);
        let t = Tenant { id: TenantId::new(), log: b.log(), store: b.store.clone(), appended };
        t.append(stream::TENANT, Event::TenantCreated { tenant_id: t.id, name: "acme".into() }).await;
        t
    }

    /// Appends `event` and returns its seq.
    async fn append(&self, stream: &str, event: Event) -> u64 {
        let records = self.log.append(self.id, stream, ExpectedVersion::Any, "admin", &[event]).await.unwrap();
        self.appended.send_modify(|n| *n += 1);
        records.last().unwrap().seq
    }

    async fn policy(&self, n: u64) -> u64 {
        self.append(stream::POLICY, common::event(n)).await
    }

    /// Registers `receiver` for `event_types` (empty: all): its secret first, as
    /// the API does, so a delivery never finds the endpoint without one.
    async fn add_webhook(&self, receiver: &Receiver, event_types: &[&str]) -> (WebhookId, u64) {
        let id = WebhookId::new();
        self.store.secrets().put(self.id, &webhook_secret_name(&id), &receiver.secret).await.unwrap();
        let webhook = Webhook {
            id,
            url: receiver.url.clone(),
            event_types: event_types.iter().map(|t| (*t).to_owned()).collect(),
            description: "test receiver".into(),
        };
        let seq = self.append(&stream::webhook(&id), Event::WebhookAdded { webhook }).await;
        (id, seq)
    }

    async fn remove_webhook(&self, id: WebhookId) -> u64 {
        self.append(&stream::webhook(&id), Event::WebhookRemoved { webhook_id: id }).await
    }

    fn msg_id(&self, seq: u64) -> String {
        webhooks::message_id(self.id, seq)
    }

    fn start(&self, store: &Store, retry: RetryPolicy) -> Running {
        start(store, self.appended.subscribe(), |n| n.with_retry_policy(retry))
    }

    async fn deliveries(&self) -> Vec<DeliveryHistory> {
        self.store.notify_store().list(self.id, None, 1000).await.unwrap()
    }

    /// Waits until every delivery is settled (delivered or failed) and returns them.
    async fn settled(&self, at_least: usize) -> Vec<DeliveryHistory> {
        let (store, tenant) = (self.store.notify_store(), self.id);
        eventually(WAIT, "every delivery to settle", || {
            let store = store.clone();
            async move {
                let all = store.list(tenant, None, 1000).await.unwrap();
                all.len() >= at_least && all.iter().all(|h| h.delivery.state != DeliveryState::Pending)
            }
        })
        .await;
        self.deliveries().await
    }
}

struct Running {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops the notifier the way a shutdown does, waiting for attempts in flight.
    async fn stop(self) {
        self.cancel.cancel();
        self.task.await.unwrap();
    }
}

fn start(store: &Store, appended: watch::Receiver<u64>, configure: impl FnOnce(Notifier) -> Notifier) -> Running {
    let notifier =
        configure(Notifier::new(store.event_log(), store.secrets(), store.notify_store(), appended).unwrap());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(notifier.run(cancel.clone()));
    Running { cancel, task }
}

async fn wait_accepted(receiver: &Receiver, msg_ids: &[String]) {
    let want: BTreeSet<String> = msg_ids.iter().cloned().collect();
    eventually(WAIT, "the receiver to accept every message", || {
        let (receiver, want) = (receiver.clone(), want.clone());
        async move { receiver.accepted_ids().is_superset(&want) }
    })
    .await;
}

async fn a_refused_delivery_is_retried_with_the_same_id(b: Backend) {
    let t = Tenant::create(&b).await;
    let receiver = Receiver::start(Mode::RefuseFirst).await;
    let (webhook_id, _) = t.add_webhook(&receiver, &[]).await;
    let notifier = t.start(&b.store, fast_retries(3));
    let seq = t.policy(1).await;
    let msg_id = t.msg_id(seq);
    wait_accepted(&receiver, std::slice::from_ref(&msg_id)).await;

    // The refused first attempt and its retry carried the same id, and the
    // receiver's deduplicated set holds the message once.
    assert_eq!(receiver.requests(), vec![(msg_id.clone(), 500), (msg_id.clone(), 200)]);
    assert_eq!(receiver.accepted_ids(), BTreeSet::from([msg_id.clone()]));
    assert_eq!(receiver.forged(), 0);
    let body = receiver.accepted(&msg_id).unwrap();
    assert_eq!(body["type"], "policy_applied");
    assert_eq!(body["data"]["tenant_id"], t.id.to_string());
    assert_eq!(body["data"]["seq"], seq);
    assert_eq!(body["data"]["stream"], stream::POLICY);
    assert_eq!(body["data"]["actor"], "admin");
    assert_eq!(body["data"]["event"], serde_json::to_value(common::event(1)).unwrap());
    assert!(
        time::OffsetDateTime::parse(
            body["timestamp"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339
        )
        .is_ok()
    );

    let deliveries = t.settled(1).await;
    assert_eq!(deliveries.len(), 1, "the tenant's creation and the webhook's own addition are not delivered to it");
    let DeliveryHistory { delivery, attempts } = &deliveries[0];
    assert_eq!(delivery.kind, notify::WEBHOOK_KIND);
    assert_eq!(delivery.target, webhook_id.to_string());
    assert_eq!((delivery.msg_id.as_str(), delivery.event_seq), (msg_id.as_str(), seq));
    assert_eq!((delivery.state, delivery.attempts, delivery.last_status), (DeliveryState::Delivered, 2, Some(200)));
    let statuses: Vec<_> = attempts.iter().map(|a| (a.attempt, a.status)).collect();
    assert_eq!(statuses, vec![(1, Some(500)), (2, Some(200))]);
    assert!(attempts[0].error.as_deref().unwrap().contains("500"), "{:?}", attempts[0].error);
    assert_eq!(attempts[1].error, None);
    notifier.stop().await;
}

async fn a_delivery_whose_every_attempt_fails_ends_failed(b: Backend) {
    let t = Tenant::create(&b).await;
    let receiver = Receiver::start(Mode::RefuseAll).await;
    let (refusing, _) = t.add_webhook(&receiver, &["policy_applied"]).await;
    // An endpoint nobody listens on: no status, only a transport error.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_url = format!("http://{}/hook", closed.local_addr().unwrap());
    drop(closed);
    let unreachable = Receiver { url: closed_url.clone(), ..receiver.clone() };
    let (gone, _) = t.add_webhook(&unreachable, &["policy_applied"]).await;
    let notifier = t.start(&b.store, fast_retries(2));
    let seq = t.policy(1).await;

    let deliveries = t.settled(2).await;
    assert_eq!(deliveries.len(), 2);
    for DeliveryHistory { delivery, attempts } in &deliveries {
        assert_eq!(delivery.event_seq, seq);
        assert_eq!((delivery.state, delivery.attempts), (DeliveryState::Failed, 3), "{delivery:?}");
        assert_eq!(attempts.iter().map(|a| a.attempt).collect::<Vec<_>>(), vec![1, 2, 3]);
        let error = delivery.last_error.clone().unwrap();
        if delivery.target == refusing.to_string() {
            assert!(attempts.iter().all(|a| a.status == Some(500)), "{attempts:?}");
            assert_eq!(delivery.last_status, Some(500));
            assert!(error.contains("500"), "{error}");
        } else {
            assert_eq!(delivery.target, gone.to_string());
            assert!(attempts.iter().all(|a| a.status.is_none() && a.error.is_some()), "{attempts:?}");
            assert!(!error.contains(&closed_url), "the endpoint's URL stays out of errors: {error}");
        }
    }
    let msg_id = t.msg_id(seq);
    assert_eq!(receiver.requests(), vec![(msg_id.clone(), 500), (msg_id.clone(), 500), (msg_id, 500)]);
    assert!(receiver.accepted_ids().is_empty());
    notifier.stop().await;
}

async fn a_webhook_gets_the_events_between_its_addition_and_its_removal(b: Backend) {
    let t = Tenant::create(&b).await;
    let (all, only_policies) = (Receiver::start(Mode::Accept).await, Receiver::start(Mode::Accept).await);
    let notifier = t.start(&b.store, fast_retries(3));
    t.policy(1).await;
    t.policy(2).await;
    let (all_id, _) = t.add_webhook(&all, &[]).await;
    let p3 = t.policy(3).await;
    let (only_policies_id, added) = t.add_webhook(&only_policies, &["policy_applied"]).await;
    let p4 = t.policy(4).await;
    let issuer_removed = t.append("issuer/x", Event::IssuerRemoved { issuer_id: IssuerId::new() }).await;
    let to_all: Vec<String> = [p3, added, p4, issuer_removed].into_iter().map(|s| t.msg_id(s)).collect();
    // Sent before the removal: one still queued when it lands would be dropped.
    wait_accepted(&all, &to_all).await;
    let removed = t.remove_webhook(all_id).await;
    let p5 = t.policy(5).await;

    wait_accepted(&only_policies, &[t.msg_id(p4), t.msg_id(p5)]).await;
    let deliveries = t.settled(6).await;
    assert_eq!(all.accepted_ids(), to_all.iter().cloned().collect(), "only events after its addition were sent");
    assert_eq!(only_policies.accepted_ids(), BTreeSet::from([t.msg_id(p4), t.msg_id(p5)]));
    assert_eq!(all.accepted(&t.msg_id(added)).unwrap()["type"], "webhook_added");
    let enqueued: BTreeSet<(String, u64)> =
        deliveries.iter().map(|h| (h.delivery.target.clone(), h.delivery.event_seq)).collect();
    let (all_id, only_policies_id) = (all_id.to_string(), only_policies_id.to_string());
    let expected: BTreeSet<(String, u64)> = [p3, added, p4, issuer_removed]
        .into_iter()
        .map(|s| (all_id.clone(), s))
        .chain([p4, p5].into_iter().map(|s| (only_policies_id.clone(), s)))
        .collect();
    assert_eq!(enqueued, expected, "nothing is queued for the removal ({removed}) or after it");
    assert!(deliveries.iter().all(|h| h.delivery.state == DeliveryState::Delivered));
    assert_eq!(all.forged() + only_policies.forged(), 0);
    notifier.stop().await;
}

async fn a_webhook_removed_before_dispatch_is_not_sent(b: Backend) {
    let t = Tenant::create(&b).await;
    let receiver = Receiver::start(Mode::Accept).await;
    let (id, _) = t.add_webhook(&receiver, &[]).await;
    let seq = t.policy(1).await;
    t.remove_webhook(id).await;
    // Started only now, the notifier reads the removal before it dispatches.
    let notifier = t.start(&b.store, fast_retries(3));

    let deliveries = t.settled(1).await;
    assert_eq!(deliveries.len(), 1);
    let DeliveryHistory { delivery, attempts } = &deliveries[0];
    assert_eq!((delivery.event_seq, delivery.state), (seq, DeliveryState::Failed));
    let error = delivery.last_error.clone().unwrap();
    assert!(error.contains(&format!("webhook {id} was removed")), "{error}");
    assert!(attempts.is_empty(), "nothing was sent: {attempts:?}");
    assert!(receiver.requests().is_empty());
    notifier.stop().await;
}

async fn a_restarted_notifier_repeats_nothing_delivered_and_loses_nothing(b: Backend) {
    let t = Tenant::create(&b).await;
    let receiver = Receiver::start(Mode::Accept).await;
    t.add_webhook(&receiver, &[]).await;
    // Retries far enough apart that nothing runs out while the endpoint is down.
    let patient = RetryPolicy { delays: vec![Duration::from_millis(100); 50] };
    let first = t.start(&b.store, patient.clone());
    let mut seqs = Vec::new();
    for n in 1..=3 {
        seqs.push(t.policy(n).await);
    }
    let delivered: Vec<String> = seqs.iter().map(|s| t.msg_id(*s)).collect();
    wait_accepted(&receiver, &delivered).await;
    t.settled(3).await;

    // The endpoint goes down with two events in flight, and the notifier stops
    // after their first refusals are recorded.
    receiver.set_mode(Mode::RefuseAll);
    for n in 4..=5 {
        seqs.push(t.policy(n).await);
    }
    let (store, tenant) = (b.store.notify_store(), t.id);
    eventually(WAIT, "both new deliveries to be refused once", || {
        let store = store.clone();
        async move {
            let all = store.list(tenant, None, 100).await.unwrap();
            all.iter().filter(|h| h.delivery.state == DeliveryState::Pending && h.delivery.attempts >= 1).count() == 2
        }
    })
    .await;
    first.stop().await;
    // Appended while no notifier runs.
    seqs.push(t.policy(6).await);

    // Another process over the same database.
    receiver.set_mode(Mode::Accept);
    let reopened = Store::open(&b.url(), common::KEY).await.unwrap();
    let second = start(&reopened, watch::channel(0).1, |n| n.with_retry_policy(patient));
    let all: Vec<String> = seqs.iter().map(|s| t.msg_id(*s)).collect();
    wait_accepted(&receiver, &all).await;
    let deliveries = t.settled(6).await;

    assert_eq!(receiver.accepted_ids(), all.iter().cloned().collect::<BTreeSet<_>>());
    for msg_id in &all {
        assert_eq!(receiver.accepted_count(msg_id), 1, "{msg_id} was delivered more than once");
    }
    let requests = receiver.requests();
    for msg_id in &delivered {
        assert_eq!(requests.iter().filter(|(id, _)| id == msg_id).count(), 1, "{msg_id} was sent again");
    }
    assert_eq!(deliveries.len(), 6, "an event was enqueued twice");
    assert!(deliveries.iter().all(|h| h.delivery.state == DeliveryState::Delivered));
    assert_eq!(reopened.notify_store().cursor(t.id, notify::CONSUMER).await.unwrap(), *seqs.last().unwrap());
    assert_eq!(receiver.forged(), 0);
    second.stop().await;
    reopened.close().await;
}

async fn a_notifier_dropped_mid_attempt_is_taken_over(b: Backend) {
    let t = Tenant::create(&b).await;
    let receiver = Receiver::start(Mode::Accept).await;
    t.add_webhook(&receiver, &[]).await;
    // A short lease, so the attempts the dropped notifier held are free again soon.
    let lease = Duration::from_millis(300);
    let configure = move |n: Notifier| n.with_retry_policy(fast_retries(3)).with_lease(lease);
    let first = start(&b.store, t.appended.subscribe(), configure);
    let sent = t.msg_id(t.policy(1).await);
    wait_accepted(&receiver, std::slice::from_ref(&sent)).await;
    t.settled(1).await;

    receiver.set_mode(Mode::Hang);
    let in_flight = [t.msg_id(t.policy(2).await), t.msg_id(t.policy(3).await)];
    let r = receiver.clone();
    let hanging = in_flight.clone();
    eventually(WAIT, "both attempts to reach the receiver", || {
        let (r, hanging) = (r.clone(), hanging.clone());
        async move { hanging.iter().all(|id| r.requests().iter().any(|(got, _)| got == id)) }
    })
    .await;
    // Dropped, not stopped: its attempts in flight are never recorded.
    first.task.abort();
    assert!(first.task.await.unwrap_err().is_cancelled());
    let queued_meanwhile = t.msg_id(t.policy(4).await);

    receiver.set_mode(Mode::Accept);
    let reopened = Store::open(&b.url(), common::KEY).await.unwrap();
    let second = start(&reopened, watch::channel(0).1, configure);
    let all = [sent.clone(), in_flight[0].clone(), in_flight[1].clone(), queued_meanwhile];
    wait_accepted(&receiver, &all).await;
    let deliveries = t.settled(4).await;

    for msg_id in &all {
        assert_eq!(receiver.accepted_count(msg_id), 1, "{msg_id}");
    }
    assert_eq!(receiver.requests().iter().filter(|(id, _)| *id == sent).count(), 1, "a delivered message was resent");
    for msg_id in &in_flight {
        // The lost attempt and the one after it carried the same id.
        assert!(receiver.requests().iter().filter(|(id, _)| id == msg_id).count() >= 2);
    }
    assert_eq!(deliveries.len(), 4);
    assert!(deliveries.iter().all(|h| h.delivery.state == DeliveryState::Delivered));
    second.stop().await;
    reopened.close().await;
}

async fn two_notifiers_on_one_database_send_each_event_once(b: Backend) {
    let t = Tenant::create(&b).await;
    let receiver = Receiver::start(Mode::Accept).await;
    t.add_webhook(&receiver, &[]).await;
    let other = Store::open(&b.url(), common::KEY).await.unwrap();
    // A poll too slow for the test: only the signals and each other's work may
    // move the deliveries along.
    let slow = |n: Notifier| n.with_retry_policy(fast_retries(3)).with_poll_interval(Duration::from_secs(60));
    let one = start(&b.store, t.appended.subscribe(), slow);
    let two = start(&other, t.appended.subscribe(), slow);
    let mut all = Vec::new();
    for n in 1..=20 {
        all.push(t.msg_id(t.policy(n).await));
    }
    wait_accepted(&receiver, &all).await;
    let deliveries = t.settled(20).await;
    assert_eq!(deliveries.len(), 20);
    assert_eq!(receiver.requests().len(), 20, "a delivery was sent by both notifiers");
    assert_eq!(receiver.forged(), 0);
    assert!(deliveries.iter().all(|h| h.delivery.attempts == 1));
    one.stop().await;
    two.stop().await;
    other.close().await;
}

async fn appends_by_another_process_are_found_by_polling(b: Backend) {
    let t = Tenant::create(&b).await;
    let receiver = Receiver::start(Mode::Accept).await;
    // A signal that never fires: only the poll can find the appends.
    let (_silent, never) = watch::channel(0);
    let notifier =
        start(&b.store, never, |n| n.with_retry_policy(fast_retries(3)).with_poll_interval(Duration::from_millis(100)));
    t.add_webhook(&receiver, &[]).await;
    let seq = t.policy(1).await;
    wait_accepted(&receiver, &[t.msg_id(seq)]).await;
    notifier.stop().await;
}

on_both_backends!(
    a_refused_delivery_is_retried_with_the_same_id,
    a_delivery_whose_every_attempt_fails_ends_failed,
    a_webhook_gets_the_events_between_its_addition_and_its_removal,
    a_webhook_removed_before_dispatch_is_not_sent,
    a_restarted_notifier_repeats_nothing_delivered_and_loses_nothing,
    a_notifier_dropped_mid_attempt_is_taken_over,
    two_notifiers_on_one_database_send_each_event_once,
    appends_by_another_process_are_found_by_polling,
);
