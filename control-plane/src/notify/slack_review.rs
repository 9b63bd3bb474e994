//! Reviews in Slack: a message with Approve and Deny buttons when a review
//! opens, updated as approvers decide and when it closes. Planned from the log
//! like every notification, so a message is posted at least once and every
//! decision reaches it, whichever way it was made (Slack, the API, the CLI).

use std::sync::Arc;

use airlock_core::review::{Outcome, Review, Reviewed};
use airlock_core::{Event, ReviewId, TenantId, TenantState};
use airlock_proto::EventRecord;
use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::slack::{BotToken, Decided, ReviewKind, ReviewMessage, SlackClient};
use super::{Deliver, Delivery, DeliveryPlanner, DeliveryResult, NewDelivery, NotifyStore};
use crate::secrets::SecretStore;

pub const SLACK_KIND: &str = "slack";

/// A Slack delivery as enqueued: everything the message shows, fixed when the
/// event is planned, so a retry posts what was true then.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Planned {
    post: bool,
    channel: String,
    api_base_url: String,
    review_id: String,
    kind: String,
    role: String,
    statement: String,
    requester: String,
    connection: String,
    reason: String,
    rule: String,
    approvers: String,
    quorum: u32,
    expires_at_unix: i64,
    /// `approved`, `denied`, `expired`; empty while pending.
    outcome: String,
    by: Vec<String>,
}

/// Plans Slack messages for reviews, when the tenant has Slack configured.
pub struct SlackPlanner;

impl DeliveryPlanner for SlackPlanner {
    fn plan(&self, _tenant: TenantId, record: &EventRecord, event: &Event, state: &TenantState) -> Vec<NewDelivery> {
        let Some(slack) = &state.slack else { return Vec::new() };
        let (review_id, post) = match event {
            Event::AccessRequested { request } if request.review.is_some() => (ReviewId::of_request(&request.id), true),
            Event::CommandHeld { command } => (command.id, true),
            Event::ReviewDecided { review_id, .. } | Event::ReviewResolved { review_id, .. } => (*review_id, false),
            _ => return Vec::new(),
        };
        let Some(review) = state.reviews.get(&review_id).filter(|r| r.in_slack) else { return Vec::new() };
        let planned = planned(state, review, post, &slack.channel, &slack.api_base_url);
        let Ok(payload) = serde_json::to_vec(&planned) else { return Vec::new() };
        let msg_id = if post { format!("post:{review_id}") } else { format!("update:{review_id}:{}", record.seq) };
        vec![NewDelivery { kind: SLACK_KIND.to_owned(), target: review_id.to_string(), msg_id, payload }]
    }
}

fn planned(state: &TenantState, review: &Review, post: bool, channel: &str, api_base_url: &str) -> Planned {
    let (kind, role, statement, reason) = match &review.what {
        Reviewed::Access(id) => {
            let request = state.access_requests.get(id);
            (
                "access",
                request.map(|q| q.role.clone()).unwrap_or_default(),
                String::new(),
                request.map(|q| q.reason.clone()).unwrap_or_default(),
            )
        }
        Reviewed::Command(held) => ("command", String::new(), held.statement.clone(), String::new()),
    };
    let (outcome, by) = match review.outcome {
        None => (String::new(), Vec::new()),
        Some((outcome, _)) => {
            let by = review
                .decisions
                .iter()
                .filter(|d| d.approve == (outcome == Outcome::Approved))
                .map(|d| d.by.clone())
                .collect();
            let nobody = matches!(outcome, Outcome::Expired | Outcome::Withdrawn);
            (outcome.as_str().to_owned(), if nobody { Vec::new() } else { by })
        }
    };
    Planned {
        post,
        channel: channel.to_owned(),
        api_base_url: api_base_url.to_owned(),
        review_id: review.id.to_string(),
        kind: kind.to_owned(),
        role,
        statement,
        requester: review.requester.clone(),
        connection: state.connections.get(&review.connection_id).map(|c| c.name.clone()).unwrap_or_default(),
        reason,
        rule: review.rule.clone(),
        approvers: review.terms.approvers.describe(),
        quorum: review.terms.quorum,
        expires_at_unix: review.terms.expires_at_unix,
        outcome,
        by,
    }
}

/// Posts and updates review messages with the tenant's bot token.
pub struct SlackDeliverer {
    secrets: Arc<dyn SecretStore>,
    store: Arc<dyn NotifyStore>,
    public_url: String,
    /// Wakes updates waiting for their review's message to be posted.
    posted: tokio::sync::Notify,
    /// One delivery per review message at a time, so updates apply in order.
    messages: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// How long an update waits for the post it updates, when both are in flight
/// at once, before it is retried on the usual schedule.
const AWAIT_POST: std::time::Duration = std::time::Duration::from_secs(10);

impl SlackDeliverer {
    pub fn new(secrets: Arc<dyn SecretStore>, store: Arc<dyn NotifyStore>, public_url: String) -> Self {
        Self { secrets, store, public_url, posted: tokio::sync::Notify::new(), messages: Default::default() }
    }

    /// Where the review's message is (`channel ts`), waiting a while for a
    /// post in flight.
    async fn message_of(&self, tenant: TenantId, key: &str) -> anyhow::Result<Option<String>> {
        let deadline = tokio::time::Instant::now() + AWAIT_POST;
        loop {
            let posted = self.posted.notified();
            if let Some(at) = self.store.note(tenant, key).await? {
                return Ok(Some(at));
            }
            if tokio::time::timeout_at(deadline, posted).await.is_err() {
                return Ok(None);
            }
        }
    }
}

fn note_key(review_id: &str) -> String {
    format!("slack/message/{review_id}")
}

#[async_trait::async_trait]
impl Deliver for SlackDeliverer {
    async fn deliver(&self, tenant: TenantId, delivery: &Delivery) -> anyhow::Result<DeliveryResult> {
        let p: Planned = serde_json::from_slice(&delivery.payload).context("reading a planned Slack message")?;
        let Some(token) = self.secrets.get(tenant, crate::service::SLACK_BOT_TOKEN).await? else {
            return Ok(DeliveryResult::GiveUp { status: None, error: "the tenant's Slack bot token is gone".into() });
        };
        let token = String::from_utf8(token.plaintext).context("the stored bot token is not text")?;
        let client = match SlackClient::with_base_url(&p.api_base_url, BotToken::new(token)) {
            Ok(c) => c,
            Err(e) => return Ok(DeliveryResult::GiveUp { status: None, error: e.to_string() }),
        };
        let message = ReviewMessage {
            review_id: p.review_id.clone(),
            tenant_id: tenant.to_string(),
            kind: if p.kind == "command" {
                ReviewKind::HeldStatement { statement: p.statement.clone() }
            } else {
                ReviewKind::AccessRequest { role: p.role.clone() }
            },
            requester: p.requester.clone(),
            connection: p.connection.clone(),
            reason: p.reason.clone(),
            rule: p.rule.clone(),
            approvers: p.approvers.clone(),
            quorum: p.quorum,
            expires_at_unix: p.expires_at_unix,
            public_url: self.public_url.clone(),
            outcome: Outcome::parse(&p.outcome).map(|outcome| Decided { outcome, by: p.by.clone() }),
        };
        let key = note_key(&p.review_id);
        let lock = {
            let mut messages = self.messages.lock().unwrap_or_else(|e| e.into_inner());
            // Forget locks nobody holds, so the map stays as small as the work in flight.
            messages.retain(|_, l| Arc::strong_count(l) > 1);
            messages.entry(key.clone()).or_default().clone()
        };
        // Held until the note is written, so a message's updates apply one at a time, in order.
        let serial;
        let result = if p.post {
            serial = lock.lock().await;
            if self.store.note(tenant, &key).await?.is_some() {
                // Posted before a crash cut the attempt's recording short.
                return Ok(DeliveryResult::Delivered { status: None });
            }
            client
                .post_message(&p.channel, &message)
                .await
                .map(|posted| Some(format!("{} {} {}", posted.channel, posted.ts, delivery.event_seq)))
        } else {
            let Some(_) = self.message_of(tenant, &key).await? else {
                return Ok(DeliveryResult::Retry {
                    status: None,
                    error: "the review's message is not posted yet".into(),
                });
            };
            serial = lock.lock().await;
            // Read again under the lock: another update may have moved it on.
            let at = self.store.note(tenant, &key).await?.unwrap_or_default();
            let mut parts = at.split(' ');
            let (Some(channel), Some(ts)) = (parts.next(), parts.next()) else {
                return Ok(DeliveryResult::GiveUp {
                    status: None,
                    error: "the stored message reference is unreadable".into(),
                });
            };
            let shown_seq: u64 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
            // Updates may be retried out of order: an older snapshot never replaces a newer one.
            if delivery.event_seq <= shown_seq {
                return Ok(DeliveryResult::Delivered { status: None });
            }
            let (channel, ts) = (channel.to_owned(), ts.to_owned());
            client
                .update_message(&channel, &ts, &message)
                .await
                .map(|()| Some(format!("{channel} {ts} {}", delivery.event_seq)))
        };
        match result {
            Ok(posted) => {
                if let Some(at) = posted {
                    self.store.set_note(tenant, &key, &at).await?;
                    self.posted.notify_waiters();
                }
                drop(serial);
                Ok(DeliveryResult::Delivered { status: Some(200) })
            }
            Err(e) if e.is_retryable() => Ok(DeliveryResult::Retry { status: None, error: e.to_string() }),
            Err(e) => Ok(DeliveryResult::GiveUp { status: None, error: e.to_string() }),
        }
    }
}
