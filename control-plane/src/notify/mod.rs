//! Outbound notifications: every tenant's events, delivered at least once to
//! the tenant's webhooks (signed per Standard Webhooks) and to whatever other
//! kinds of target registered planners ask for (Slack, ...).
//!
//! The `Notifier` does two things side by side:
//!
//! - It follows each tenant's log from a durable cursor, folds the events into
//!   a state of its own, and turns each event into deliveries: one per webhook
//!   that existed before the event and still exists after it and wants its
//!   type, plus whatever each `DeliveryPlanner` returns. The deliveries of a
//!   batch and the cursor's move are one transaction (see `store`), so an event
//!   is never skipped and never enqueued twice. Its own fold, rather than the
//!   control plane's projection, gives the webhooks as they were at each event
//!   even while catching up, and it sees appends made by other processes.
//! - It dispatches due deliveries, a bounded number at a time. A failed attempt
//!   is retried on the `RetryPolicy`'s schedule; after the last delay the
//!   delivery is failed. Every attempt is recorded.
//!
//! A delivery is leased while in flight, so after a crash it is attempted again
//! once the lease runs out. Receivers drop repeats by `webhook-id`.

pub mod slack;
pub mod slack_review;
pub mod store;
pub mod webhooks;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use airlock_core::integration::Webhook;
use airlock_core::{Event, TenantId, TenantState, WebhookId};
use airlock_proto::EventRecord;
use anyhow::Context as _;
use rand::Rng as _;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

pub use store::{AfterAttempt, Attempt, Delivery, DeliveryHistory, DeliveryState, NewDelivery, NotifyStore};

use crate::eventlog::EventLog;
use crate::eventlog::records::now_unix_ms;
use crate::secrets::SecretStore;

/// The kind of the deliveries this module sends itself.
pub const WEBHOOK_KIND: &str = "webhook";
/// The notifier's cursor name in the store.
pub const CONSUMER: &str = "notifier";

/// Records read from the log at a time.
const READ_BATCH: u32 = 256;
/// How often the log is looked at without a signal (appends by other processes),
/// and the longest the dispatcher sleeps.
const DEFAULT_POLL: Duration = Duration::from_secs(3);
const MAX_IN_FLIGHT: usize = 16;
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a registered handler may take over one attempt.
const HANDLER_TIMEOUT: Duration = Duration::from_secs(30);
/// Longer than any attempt may take, so a lease runs out only when the
/// dispatcher holding it has died.
const LEASE: Duration = Duration::from_secs(60);
/// How long the dispatcher waits after the store failed.
const STORE_BACKOFF: Duration = Duration::from_secs(1);
/// Each retry waits its delay plus up to this fraction more, so deliveries that
/// failed together (an endpoint down) do not all come back at once.
const JITTER: f64 = 0.2;

/// The secret store name of a webhook's signing secret (raw bytes).
pub fn webhook_secret_name(id: &WebhookId) -> String {
    format!("webhook/{id}")
}

/// When failed attempts are retried: after attempt `n` fails, wait `delays[n-1]`
/// (plus jitter); after the last delay's attempt fails, the delivery is failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    pub delays: Vec<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        let minutes = |m: u64| Duration::from_secs(60 * m);
        Self {
            delays: vec![
                Duration::from_secs(5),
                Duration::from_secs(30),
                minutes(2),
                minutes(10),
                minutes(30),
                minutes(60),
                minutes(180),
            ],
        }
    }
}

impl RetryPolicy {
    /// The wait before the attempt after failed attempt `attempt` (1-based), or
    /// `None` when that was the last one allowed.
    pub fn delay_after(&self, attempt: u32) -> Option<Duration> {
        let index = usize::try_from(attempt).ok()?.checked_sub(1)?;
        let base = *self.delays.get(index)?;
        Some(base + base.mul_f64(rand::thread_rng().gen_range(0.0..=JITTER)))
    }
}

/// What one attempt by a registered handler came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryResult {
    /// The receiver took it.
    Delivered { status: Option<u16> },
    /// Refused or unreachable this time; retried on the policy's schedule.
    Retry { status: Option<u16>, error: String },
    /// Can never succeed (the target is gone, the request is refused for good): failed now.
    GiveUp { status: Option<u16>, error: String },
}

/// Sends deliveries of one kind other than `webhook`. An `Err` counts as a
/// failed attempt and is retried. An attempt must end within 30 s.
#[async_trait::async_trait]
pub trait Deliver: Send + Sync + 'static {
    async fn deliver(&self, tenant: TenantId, delivery: &Delivery) -> anyhow::Result<DeliveryResult>;
}

/// Decides what deliveries of other kinds an event causes. Called once per
/// event, in `seq` order, with the tenant's state just after the event; what it
/// returns is enqueued in the same transaction as the event's webhooks. It runs
/// again for events that were being enqueued when the process stopped, so it
/// must answer the same for the same event; a repeated
/// `(kind, target, msg_id)` is not enqueued twice.
pub trait DeliveryPlanner: Send + Sync + 'static {
    fn plan(&self, tenant: TenantId, record: &EventRecord, event: &Event, state: &TenantState) -> Vec<NewDelivery>;
}

/// Follows every tenant's log and delivers its notifications. Build it with
/// `new`, adjust with the `with_*` methods, then `run` it.
pub struct Notifier {
    inner: Inner,
    appended: watch::Receiver<u64>,
}

struct Inner {
    log: Arc<dyn EventLog>,
    secrets: Arc<dyn SecretStore>,
    store: Arc<dyn NotifyStore>,
    retry: RetryPolicy,
    http: reqwest::Client,
    poll: Duration,
    lease: Duration,
    planners: Vec<Arc<dyn DeliveryPlanner>>,
    handlers: HashMap<String, Arc<dyn Deliver>>,
    /// Each tenant's state at its cursor: what the follower has enqueued up to,
    /// and what the dispatcher checks a webhook still exists against.
    states: RwLock<HashMap<TenantId, TenantState>>,
    /// Wakes the dispatcher when deliveries were enqueued.
    enqueued: Notify,
}

/// What became of a claimed delivery before any recording.
enum Step {
    Attempted(DeliveryResult),
    /// Not sent and never will be; no attempt is recorded.
    Abandon(String),
    /// Not ready to decide (the tenant's state is behind the delivery): later.
    Postpone,
}

impl Notifier {
    /// `appended` should change after every append to the log in this process
    /// (`ControlPlane::appended`); appends elsewhere are found by polling.
    pub fn new(
        log: Arc<dyn EventLog>,
        secrets: Arc<dyn SecretStore>,
        store: Arc<dyn NotifyStore>,
        appended: watch::Receiver<u64>,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            // A redirect is an answer, not a delivery; following one would also let an
            // endpoint point our signed request somewhere the tenant never registered.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("Airlock-Webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the webhook HTTP client")?;
        Ok(Self {
            inner: Inner {
                log,
                secrets,
                store,
                retry: RetryPolicy::default(),
                http,
                poll: DEFAULT_POLL,
                lease: LEASE,
                planners: Vec::new(),
                handlers: HashMap::new(),
                states: RwLock::new(HashMap::new()),
                enqueued: Notify::new(),
            },
            appended,
        })
    }

    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.inner.retry = retry;
        self
    }

    /// Replaces the HTTP client webhooks are sent with. Each request still times
    /// out after 10 s; the client should not follow redirects.
    pub fn with_http_client(mut self, http: reqwest::Client) -> Self {
        self.inner.http = http;
        self
    }

    /// How often to look at the log and the queue without a signal.
    pub fn with_poll_interval(mut self, poll: Duration) -> Self {
        self.inner.poll = poll;
        self
    }

    /// How long a claimed delivery is held before any dispatcher may attempt it
    /// again (60 s). It must outlast an attempt, or one delivery is sent twice
    /// at once; it is how long a delivery waits after its dispatcher died.
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.inner.lease = lease;
        self
    }

    pub fn with_planner(mut self, planner: Arc<dyn DeliveryPlanner>) -> Self {
        self.inner.planners.push(planner);
        self
    }

    /// Dispatches deliveries of `kind` through `handler`.
    pub fn with_handler(mut self, kind: impl Into<String>, handler: Arc<dyn Deliver>) -> Self {
        self.inner.handlers.insert(kind.into(), handler);
        self
    }

    /// Runs until `cancel` fires, then lets the attempts in flight finish and be
    /// recorded. Errors are logged and retried, never returned.
    pub async fn run(self, cancel: CancellationToken) {
        let Notifier { inner, appended } = self;
        let inner = Arc::new(inner);
        async move {
            // States first, so the first deliveries find them ready rather than
            // each reading the log to tell a removed webhook from an unread one.
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = inner.follow_all(&cancel) => {}
            }
            tokio::join!(inner.clone().follow(appended, cancel.clone()), inner.clone().dispatch(cancel));
        }
        .instrument(tracing::info_span!("notifier"))
        .await;
    }
}

impl Inner {
    fn state(&self, tenant: &TenantId) -> Option<TenantState> {
        self.states.read().unwrap_or_else(|e| e.into_inner()).get(tenant).cloned()
    }

    fn held_seq(&self, tenant: &TenantId) -> Option<u64> {
        self.states.read().unwrap_or_else(|e| e.into_inner()).get(tenant).map(|s| s.seq)
    }

    /// The `seq` the held state is at and the webhook as of then.
    fn webhook(&self, tenant: &TenantId, id: &WebhookId) -> Option<(u64, Option<Webhook>)> {
        let states = self.states.read().unwrap_or_else(|e| e.into_inner());
        states.get(tenant).map(|s| (s.seq, s.webhooks.get(id).cloned()))
    }

    /// Keeps the newer of the held state and `state`: the follower and the
    /// dispatcher both bring states up to the cursor, and neither may take one back.
    fn install(&self, tenant: TenantId, state: TenantState) {
        let mut states = self.states.write().unwrap_or_else(|e| e.into_inner());
        if states.get(&tenant).is_none_or(|held| held.seq <= state.seq) {
            states.insert(tenant, state);
        }
    }

    async fn follow(self: Arc<Self>, appended: watch::Receiver<u64>, cancel: CancellationToken) {
        let mut appended = Some(appended);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = changed(&mut appended) => {}
                _ = tokio::time::sleep(self.poll) => {}
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.follow_all(&cancel) => {}
            }
        }
    }

    async fn follow_all(&self, cancel: &CancellationToken) {
        let tenants = match self.log.tenants().await {
            Ok(tenants) => tenants,
            Err(e) => {
                tracing::warn!("failed to list tenants: {e:#}");
                return;
            }
        };
        for tenant in tenants {
            if cancel.is_cancelled() {
                return;
            }
            if let Err(e) = self.follow_tenant(tenant).await {
                tracing::warn!(%tenant, "failed to enqueue notifications: {e:#}");
            }
        }
    }

    /// Enqueues the deliveries of the tenant's events past its cursor.
    async fn follow_tenant(&self, tenant: TenantId) -> anyhow::Result<()> {
        let mut state: Option<TenantState> = None;
        loop {
            let from = match &state {
                Some(state) => state.seq,
                None => match self.held_seq(&tenant) {
                    Some(seq) => seq,
                    None => self.state_at_cursor(tenant).await?.seq,
                },
            };
            let records = self.log.read(tenant, from + 1, READ_BATCH).await?;
            let Some(to) = records.last().map(|r| r.seq) else { return Ok(()) };
            // Cloned only now: most passes find nothing new.
            let mut next = match state.take().or_else(|| self.state(&tenant)) {
                Some(state) if state.seq == from => state,
                // The dispatcher brought it further meanwhile; start from there.
                _ => continue,
            };
            let mut planned = Vec::new();
            for record in &records {
                let event = airlock_proto::convert::decode_event(&record.payload)
                    .with_context(|| format!("decoding event {}", record.seq))?;
                let wanting: Vec<WebhookId> =
                    next.webhooks.values().filter(|w| w.wants(event.type_name())).map(|w| w.id).collect();
                next.apply_at(record.seq, &event).with_context(|| format!("applying event {}", record.seq))?;
                self.plan(tenant, record, &event, &next, wanting, &mut planned)?;
            }
            if self.store.enqueue(tenant, CONSUMER, from, to, &planned).await? {
                self.install(tenant, next.clone());
                state = Some(next);
                if !planned.is_empty() {
                    self.enqueued.notify_one();
                }
            } else {
                // Another notifier moved the cursor; carry on from where it left it.
                state = Some(self.state_at_cursor(tenant).await?);
            }
        }
    }

    /// The deliveries `event` causes: to the webhooks in `wanting` (those that
    /// existed before it and want its type) that still exist after it, so a
    /// webhook gets neither the event that added it nor the one that removed it;
    /// and whatever the planners ask for.
    fn plan(
        &self,
        tenant: TenantId,
        record: &EventRecord,
        event: &Event,
        state: &TenantState,
        wanting: Vec<WebhookId>,
        planned: &mut Vec<(u64, NewDelivery)>,
    ) -> anyhow::Result<()> {
        let targets: Vec<WebhookId> = wanting.into_iter().filter(|id| state.webhooks.contains_key(id)).collect();
        if !targets.is_empty() {
            let payload = webhooks::payload(tenant, record, event)?;
            let msg_id = webhooks::message_id(tenant, record.seq);
            for id in targets {
                planned.push((
                    record.seq,
                    NewDelivery {
                        kind: WEBHOOK_KIND.to_owned(),
                        target: id.to_string(),
                        msg_id: msg_id.clone(),
                        payload: payload.clone(),
                    },
                ));
            }
        }
        for planner in &self.planners {
            planned.extend(planner.plan(tenant, record, event, state).into_iter().map(|d| (record.seq, d)));
        }
        Ok(())
    }

    /// The tenant's state at its stored cursor, folded from the log (starting
    /// from the state already held when that is not past the cursor).
    async fn state_at_cursor(&self, tenant: TenantId) -> anyhow::Result<TenantState> {
        let cursor = self.store.cursor(tenant, CONSUMER).await?;
        let mut state = self.state(&tenant).filter(|s| s.seq <= cursor).unwrap_or_default();
        while state.seq < cursor {
            let records = self.log.read(tenant, state.seq + 1, READ_BATCH).await?;
            if records.is_empty() {
                anyhow::bail!("the log ends at seq {} before the notification cursor at {cursor}", state.seq);
            }
            for record in records.iter().filter(|r| r.seq <= cursor) {
                let event = airlock_proto::convert::decode_event(&record.payload)
                    .with_context(|| format!("decoding event {}", record.seq))?;
                state.apply_at(record.seq, &event).with_context(|| format!("applying event {}", record.seq))?;
            }
        }
        self.install(tenant, state.clone());
        Ok(state)
    }

    async fn dispatch(self: Arc<Self>, cancel: CancellationToken) {
        let mut in_flight = JoinSet::new();
        while !cancel.is_cancelled() {
            let mut wait = self.poll;
            let free = MAX_IN_FLIGHT.saturating_sub(in_flight.len());
            if free > 0 {
                let now = now_unix_ms();
                let limit = u32::try_from(free).unwrap_or(u32::MAX);
                match self.store.claim_due(now, now.saturating_add(millis(self.lease)), limit).await {
                    Ok(claimed) => {
                        for delivery in claimed {
                            in_flight.spawn(self.clone().attempt(delivery));
                        }
                        // Sleep until the next delivery is due; with every slot
                        // busy, a finishing attempt wakes us instead.
                        if in_flight.len() < MAX_IN_FLIGHT {
                            match self.store.next_due().await {
                                Ok(Some(at)) => wait = wait.min(until(at)),
                                Ok(None) => {}
                                Err(e) => tracing::warn!("failed to read the delivery queue: {e:#}"),
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!("failed to claim deliveries: {e:#}");
                        wait = STORE_BACKOFF;
                    }
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = self.enqueued.notified() => {}
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        // Attempts already sent are recorded before returning, so a restarted
        // notifier does not send them again.
        while in_flight.join_next().await.is_some() {}
    }

    /// One attempt at `delivery`, recorded.
    async fn attempt(self: Arc<Self>, delivery: Delivery) {
        let started_at = now_unix_ms();
        let started = Instant::now();
        let step = if delivery.kind == WEBHOOK_KIND {
            self.send_webhook(&delivery).await
        } else {
            self.hand_over(&delivery).await
        };
        let duration = started.elapsed();
        let outcome = match step {
            Step::Attempted(result) => self.record(&delivery, result, started_at, duration).await,
            Step::Abandon(error) => {
                tracing::info!(
                    tenant = %delivery.tenant,
                    kind = %delivery.kind,
                    target = %delivery.target,
                    event_seq = delivery.event_seq,
                    error = %error,
                    "notification failed",
                );
                self.store.abandon(delivery.id, &error).await
            }
            Step::Postpone => self.store.postpone(delivery.id, now_unix_ms().saturating_add(millis(self.poll))).await,
        };
        if let Err(e) = outcome {
            // The lease runs out and the delivery is attempted again.
            tracing::warn!(tenant = %delivery.tenant, delivery = delivery.id, "failed to record an attempt: {e:#}");
        }
    }

    async fn record(
        &self,
        delivery: &Delivery,
        result: DeliveryResult,
        started_at: i64,
        duration: Duration,
    ) -> anyhow::Result<()> {
        let number = delivery.attempts.saturating_add(1);
        let (status, error, after) = match result {
            DeliveryResult::Delivered { status } => (status, None, AfterAttempt::Delivered),
            DeliveryResult::Retry { status, error } => {
                let after = match self.retry.delay_after(number) {
                    Some(delay) => AfterAttempt::RetryAt(now_unix_ms().saturating_add(millis(delay))),
                    None => AfterAttempt::Failed,
                };
                (status, Some(error), after)
            }
            DeliveryResult::GiveUp { status, error } => (status, Some(error), AfterAttempt::Failed),
        };
        let outcome = match after {
            AfterAttempt::Delivered => "delivered",
            AfterAttempt::RetryAt(_) => "retrying",
            AfterAttempt::Failed => "failed",
        };
        tracing::info!(
            tenant = %delivery.tenant,
            kind = %delivery.kind,
            target = %delivery.target,
            event_seq = delivery.event_seq,
            attempt = number,
            status = status.map(i64::from).unwrap_or(-1),
            error = error.as_deref().unwrap_or(""),
            outcome,
            "notification attempt",
        );
        let attempt = Attempt {
            delivery_id: delivery.id,
            attempt: number,
            at_ms: started_at,
            status,
            error,
            duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
        };
        self.store.record_attempt(&attempt, after).await
    }

    async fn hand_over(&self, delivery: &Delivery) -> Step {
        let Some(handler) = self.handlers.get(&delivery.kind) else {
            return Step::Attempted(DeliveryResult::Retry {
                status: None,
                error: format!("no handler is registered for {} notifications", delivery.kind),
            });
        };
        let result = match tokio::time::timeout(HANDLER_TIMEOUT, handler.deliver(delivery.tenant, delivery)).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => DeliveryResult::Retry { status: None, error: format!("{e:#}") },
            Err(_) => DeliveryResult::Retry {
                status: None,
                error: format!("no answer within {} s", HANDLER_TIMEOUT.as_secs()),
            },
        };
        Step::Attempted(result)
    }

    async fn send_webhook(&self, delivery: &Delivery) -> Step {
        let Ok(id) = delivery.target.parse::<WebhookId>() else {
            return Step::Abandon(format!("{:?} is not a webhook id", delivery.target));
        };
        let mut known = self.webhook(&delivery.tenant, &id);
        if known.as_ref().is_none_or(|(seq, _)| *seq < delivery.event_seq) {
            // Another notifier enqueued it, past what this one has read; the
            // cursor is at or beyond the delivery's event.
            match self.state_at_cursor(delivery.tenant).await {
                Ok(state) => known = Some((state.seq, state.webhooks.get(&id).cloned())),
                Err(e) => tracing::warn!(tenant = %delivery.tenant, "failed to read the log: {e:#}"),
            }
        }
        let webhook = match known {
            Some((seq, webhook)) if seq >= delivery.event_seq => webhook,
            _ => return Step::Postpone,
        };
        let Some(webhook) = webhook else {
            return Step::Abandon(format!("webhook {id} was removed before this notification was sent"));
        };
        let secret = match self.secrets.get(delivery.tenant, &webhook_secret_name(&id)).await {
            Ok(Some(secret)) => secret,
            Ok(None) => {
                return Step::Attempted(DeliveryResult::Retry {
                    status: None,
                    error: format!("webhook {id} has no signing secret"),
                });
            }
            Err(e) => {
                return Step::Attempted(DeliveryResult::Retry {
                    status: None,
                    error: format!("reading the signing secret of webhook {id}: {e:#}"),
                });
            }
        };
        let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
        let signature = webhooks::sign(&secret.plaintext, &delivery.msg_id, timestamp, &delivery.payload);
        drop(secret);
        let sent = self
            .http
            .post(&webhook.url)
            .timeout(HTTP_TIMEOUT)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(webhooks::HEADER_ID, &delivery.msg_id)
            .header(webhooks::HEADER_TIMESTAMP, timestamp.to_string())
            .header(webhooks::HEADER_SIGNATURE, signature)
            .body(delivery.payload.clone())
            .send()
            .await;
        Step::Attempted(match sent {
            Ok(response) if response.status().is_success() => {
                DeliveryResult::Delivered { status: Some(response.status().as_u16()) }
            }
            Ok(response) => DeliveryResult::Retry {
                status: Some(response.status().as_u16()),
                error: format!("the endpoint answered {}", response.status()),
            },
            // Without the URL: its path or query may carry a token of the receiver's.
            Err(e) => {
                DeliveryResult::Retry { status: None, error: format!("{:#}", anyhow::Error::new(e.without_url())) }
            }
        })
    }
}

/// Resolves when `appended` changes; never, once its sender is gone (the poll
/// takes over).
async fn changed(appended: &mut Option<watch::Receiver<u64>>) {
    if let Some(rx) = appended.as_mut()
        && rx.changed().await.is_ok()
    {
        return;
    }
    *appended = None;
    std::future::pending::<()>().await;
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// How long until the unix time `at_ms` (zero when past).
fn until(at_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(at_ms.saturating_sub(now_unix_ms())).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_policy_runs_out_after_its_last_delay() {
        let policy = RetryPolicy { delays: vec![Duration::from_secs(5), Duration::from_secs(30)] };
        for _ in 0..100 {
            let first = policy.delay_after(1).unwrap();
            assert!(first >= Duration::from_secs(5) && first <= Duration::from_secs(6), "{first:?}");
            let second = policy.delay_after(2).unwrap();
            assert!(second >= Duration::from_secs(30) && second <= Duration::from_secs(36), "{second:?}");
        }
        assert_eq!(policy.delay_after(3), None);
        assert_eq!(policy.delay_after(0), None);
        assert_eq!(RetryPolicy { delays: vec![] }.delay_after(1), None);
        assert_eq!(RetryPolicy::default().delays.len(), 7);
    }

    #[test]
    fn retries_spread_out() {
        let policy = RetryPolicy { delays: vec![Duration::from_secs(60)] };
        let delays: std::collections::BTreeSet<_> = (0..20).map(|_| policy.delay_after(1).unwrap()).collect();
        assert!(delays.len() > 1, "every retry waited exactly the same");
    }

    #[test]
    fn webhook_secrets_are_named_by_the_webhook() {
        let id = WebhookId::new();
        assert_eq!(webhook_secret_name(&id), format!("webhook/{id}"));
    }
}
