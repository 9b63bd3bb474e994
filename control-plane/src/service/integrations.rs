//! Where a tenant's notifications go: webhook endpoints and a Slack workspace.
//! Their secrets go to the secret store; the log records only where and what.

use std::collections::BTreeMap;

use airlock_core::event::stream;
use airlock_core::integration::{SLACK_API_BASE_URL, SlackSettings, SlackUser, Webhook};
use airlock_core::principal::Principal;
use airlock_core::{Event, TenantId, WebhookId};
use serde::{Deserialize, Serialize};

use super::{ControlPlane, Planned, require_tenant_admin};
use crate::error::ApiError;
use crate::eventlog::ExpectedVersion;
use crate::notify::webhook_secret_name;

pub(crate) const SLACK_BOT_TOKEN: &str = "slack/bot-token";
pub(crate) const SLACK_SIGNING_SECRET: &str = "slack/signing-secret";
const MAX_WEBHOOKS: usize = 50;
const MAX_SLACK_USERS: usize = 10_000;

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookInput {
    /// Where events are POSTed (https, or http to a loopback address).
    pub url: String,
    /// Event types to deliver (e.g. `access_requested`, `review_resolved`); empty: all.
    #[serde(default)]
    pub event_types: Vec<String>,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WebhookView {
    pub id: String,
    pub url: String,
    pub event_types: Vec<String>,
    pub description: String,
}

/// Returned once, when the endpoint is added: the signing secret is not shown again.
#[derive(Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreatedWebhook {
    pub webhook: WebhookView,
    /// `whsec_...`: verify deliveries with it, per Standard Webhooks.
    pub secret: String,
}

impl std::fmt::Debug for CreatedWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedWebhook").field("webhook", &self.webhook).finish_non_exhaustive()
    }
}

#[derive(Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SlackInput {
    /// The workspace's id (`T0123456789`); presses from any other workspace are refused.
    pub team_id: String,
    /// The channel review messages go to (its id, e.g. `C0123456789`).
    pub channel: String,
    /// The app's bot token (`xoxb-...`).
    pub bot_token: String,
    /// The app's signing secret, which verifies the button clicks Slack sends back.
    pub signing_secret: String,
    /// Slack's Web API (default `https://slack.com/api`).
    #[serde(default)]
    pub api_base_url: Option<String>,
    /// Slack user id to the principal it approves as.
    #[serde(default)]
    pub users: BTreeMap<String, SlackUserInput>,
}

impl std::fmt::Debug for SlackInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackInput").field("channel", &self.channel).finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SlackUserInput {
    pub subject: String,
    #[serde(default)]
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SlackView {
    pub team_id: String,
    pub channel: String,
    pub api_base_url: String,
    pub users: BTreeMap<String, SlackUserInput>,
}

/// A notification delivery and its attempts, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeliveryView {
    pub id: i64,
    /// `webhook` or `slack`.
    pub kind: String,
    /// The webhook's id, or the review a Slack message is about.
    pub target: String,
    /// The `webhook-id` a receiver deduplicates by.
    pub msg_id: String,
    pub event_seq: u64,
    /// `pending`, `delivered` or `failed`.
    pub state: String,
    pub next_attempt_at_ms: i64,
    pub attempts: Vec<DeliveryAttemptView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeliveryAttemptView {
    pub attempt: u32,
    pub at_ms: i64,
    /// The receiver's HTTP status; absent when it did not answer.
    pub status: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: u64,
}

fn webhook_view(w: &Webhook) -> WebhookView {
    WebhookView {
        id: w.id.to_string(),
        url: w.url.clone(),
        event_types: w.event_types.clone(),
        description: w.description.clone(),
    }
}

/// An http(s) URL; plain http only to a loopback host, since deliveries carry
/// the tenant's events.
fn check_url(field: &str, url: &str) -> Result<(), ApiError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| ApiError::invalid(field, format!("not a URL: {e}")))?;
    let host = parsed.host_str().unwrap_or_default();
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err(ApiError::invalid(field, "must be https (plain http only to a loopback address)")),
        other => Err(ApiError::invalid(field, format!("scheme {other:?} is not http(s)"))),
    }?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(ApiError::invalid(field, "must not carry credentials"));
    }
    if url.len() > 2048 {
        return Err(ApiError::invalid(field, "at most 2048 characters"));
    }
    Ok(())
}

impl ControlPlane {
    pub async fn add_webhook(&self, principal: &Principal, input: WebhookInput) -> Result<CreatedWebhook, ApiError> {
        require_tenant_admin(principal)?;
        check_url("url", &input.url)?;
        if input.description.len() > 256 {
            return Err(ApiError::invalid("description", "at most 256 characters"));
        }
        for (i, t) in input.event_types.iter().enumerate() {
            if t.is_empty() || t.len() > 64 || !t.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                return Err(ApiError::invalid(format!("event_types[{i}]"), "an event type such as access_requested"));
            }
        }
        let webhook = Webhook {
            id: WebhookId::new(),
            url: input.url,
            event_types: input.event_types,
            description: input.description,
        };
        // The secret is stored before the endpoint exists, so no delivery is ever unsigned.
        let secret = crate::notify::webhooks::generate_secret();
        self.put_secret(principal.tenant_id, &webhook_secret_name(&webhook.id), &secret).await?;
        let (_, ()) = self
            .command(principal.tenant_id, &principal.subject, |state| {
                if state.webhooks.len() >= MAX_WEBHOOKS {
                    return Err(ApiError::conflict(format!("a tenant has at most {MAX_WEBHOOKS} webhooks")));
                }
                let event = Event::WebhookAdded { webhook: webhook.clone() };
                Ok((Planned::one(stream::webhook(&webhook.id), ExpectedVersion::NoStream, event), ()))
            })
            .await?;
        // Not the URL: it may carry a token of the receiver's.
        tracing::info!(tenant = %principal.tenant_id, webhook = %webhook.id, "webhook added");
        Ok(CreatedWebhook {
            webhook: webhook_view(&webhook),
            secret: crate::notify::webhooks::secret_to_string(&secret),
        })
    }

    pub fn list_webhooks(&self, principal: &Principal) -> Result<Vec<WebhookView>, ApiError> {
        require_tenant_admin(principal)?;
        Ok(self.tenants.read(|t| {
            t.get(&principal.tenant_id).map(|s| s.webhooks.values().map(webhook_view).collect()).unwrap_or_default()
        }))
    }

    pub async fn remove_webhook(&self, principal: &Principal, id: &str) -> Result<(), ApiError> {
        require_tenant_admin(principal)?;
        let not_found = || ApiError::not_found(format!("webhook {id}"));
        let webhook_id: WebhookId = id.parse().map_err(|_| not_found())?;
        self.command(principal.tenant_id, &principal.subject, |state| {
            state.webhooks.get(&webhook_id).ok_or_else(not_found)?;
            let event = Event::WebhookRemoved { webhook_id };
            Ok((Planned::one(stream::webhook(&webhook_id), ExpectedVersion::Any, event), ()))
        })
        .await?;
        self.secrets
            .delete(principal.tenant_id, &webhook_secret_name(&webhook_id))
            .await
            .map_err(|e| ApiError::internal("delete a webhook secret", e))?;
        Ok(())
    }

    /// The tenant's latest deliveries (webhooks and Slack), each with its attempts.
    pub async fn list_deliveries(
        &self,
        principal: &Principal,
        before: Option<i64>,
        limit: Option<u32>,
    ) -> Result<Vec<DeliveryView>, ApiError> {
        require_tenant_admin(principal)?;
        let limit = limit.unwrap_or(50).clamp(1, 500);
        let histories = self
            .deliveries
            .list(principal.tenant_id, before, limit)
            .await
            .map_err(|e| ApiError::internal("list deliveries", e))?;
        Ok(histories
            .into_iter()
            .map(|h| DeliveryView {
                id: h.delivery.id,
                kind: h.delivery.kind,
                target: h.delivery.target,
                msg_id: h.delivery.msg_id,
                event_seq: h.delivery.event_seq,
                state: h.delivery.state.as_str().to_owned(),
                next_attempt_at_ms: h.delivery.next_attempt_at_ms,
                attempts: h
                    .attempts
                    .into_iter()
                    .rev()
                    .map(|a| DeliveryAttemptView {
                        attempt: a.attempt,
                        at_ms: a.at_ms,
                        status: a.status,
                        error: a.error,
                        duration_ms: a.duration_ms,
                    })
                    .collect(),
            })
            .collect())
    }

    pub async fn configure_slack(&self, principal: &Principal, input: SlackInput) -> Result<SlackView, ApiError> {
        require_tenant_admin(principal)?;
        let channel_ok = !input.channel.is_empty()
            && input.channel.len() <= 80
            && input.channel.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_#".contains(&b));
        if !channel_ok {
            return Err(ApiError::invalid("channel", "a channel id such as C0123456789"));
        }
        let team_ok = !input.team_id.is_empty()
            && input.team_id.len() <= 32
            && input.team_id.bytes().all(|b| b.is_ascii_alphanumeric());
        if !team_ok {
            return Err(ApiError::invalid("team_id", "the workspace's id, such as T0123456789"));
        }
        if !input.bot_token.starts_with("xoxb-") || input.bot_token.len() > 256 {
            return Err(ApiError::invalid("bot_token", "a bot token (xoxb-...)"));
        }
        if input.signing_secret.len() < 16 || input.signing_secret.len() > 256 {
            return Err(ApiError::invalid("signing_secret", "the app's signing secret"));
        }
        let api_base_url = input.api_base_url.clone().unwrap_or_else(|| SLACK_API_BASE_URL.to_owned());
        check_url("api_base_url", &api_base_url)?;
        if input.users.len() > MAX_SLACK_USERS {
            return Err(ApiError::invalid("users", format!("at most {MAX_SLACK_USERS}")));
        }
        for (id, user) in &input.users {
            if id.is_empty() || id.len() > 32 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(ApiError::invalid(format!("users.{id}"), "a Slack user id such as U0123456789"));
            }
            if user.subject.is_empty() || user.subject.len() > 255 {
                return Err(ApiError::invalid(format!("users.{id}.subject"), "1 to 255 characters"));
            }
        }
        self.put_secret(principal.tenant_id, SLACK_BOT_TOKEN, input.bot_token.as_bytes()).await?;
        self.put_secret(principal.tenant_id, SLACK_SIGNING_SECRET, input.signing_secret.as_bytes()).await?;
        let slack = SlackSettings {
            team_id: input.team_id.clone(),
            channel: input.channel.clone(),
            api_base_url: api_base_url.trim_end_matches('/').to_owned(),
            users: input
                .users
                .iter()
                .map(|(id, u)| (id.clone(), SlackUser { subject: u.subject.clone(), groups: u.groups.clone() }))
                .collect(),
        };
        let view = slack_view(&slack);
        self.command(principal.tenant_id, &principal.subject, |_| {
            Ok((Planned::one(stream::SLACK, ExpectedVersion::Any, Event::SlackConfigured { slack }), ()))
        })
        .await?;
        tracing::info!(tenant = %principal.tenant_id, channel = %view.channel, "slack configured");
        Ok(view)
    }

    pub fn get_slack(&self, principal: &Principal) -> Result<SlackView, ApiError> {
        require_tenant_admin(principal)?;
        self.tenants
            .read(|t| t.get(&principal.tenant_id).and_then(|s| s.slack.as_ref().map(slack_view)))
            .ok_or_else(|| ApiError::not_found("slack integration"))
    }

    pub async fn remove_slack(&self, principal: &Principal) -> Result<(), ApiError> {
        require_tenant_admin(principal)?;
        self.command(principal.tenant_id, &principal.subject, |state| {
            state.slack.as_ref().ok_or_else(|| ApiError::not_found("slack integration"))?;
            Ok((Planned::one(stream::SLACK, ExpectedVersion::Any, Event::SlackRemoved {}), ()))
        })
        .await?;
        for name in [SLACK_BOT_TOKEN, SLACK_SIGNING_SECRET] {
            self.secrets
                .delete(principal.tenant_id, name)
                .await
                .map_err(|e| ApiError::internal("delete a secret", e))?;
        }
        Ok(())
    }

    async fn put_secret(&self, tenant: TenantId, name: &str, value: &[u8]) -> Result<u64, ApiError> {
        self.secrets.put(tenant, name, value).await.map_err(|e| ApiError::internal("store a secret", e))
    }

    /// A secret of the tenant's, for the notifier and the Slack callback.
    pub(crate) async fn read_secret(&self, tenant: TenantId, name: &str) -> Result<Option<Vec<u8>>, ApiError> {
        let secret = self.secrets.get(tenant, name).await.map_err(|e| ApiError::internal("read a secret", e))?;
        Ok(secret.map(|s| s.plaintext))
    }
}

fn slack_view(s: &SlackSettings) -> SlackView {
    SlackView {
        team_id: s.team_id.clone(),
        channel: s.channel.clone(),
        api_base_url: s.api_base_url.clone(),
        users: s
            .users
            .iter()
            .map(|(id, u)| (id.clone(), SlackUserInput { subject: u.subject.clone(), groups: u.groups.clone() }))
            .collect(),
    }
}

/// What a Slack button press did, for the HTTP reply.
#[derive(Debug)]
pub struct SlackOutcome {
    pub review: super::ReviewView,
}

impl ControlPlane {
    /// A button press from a Slack review message. The body's signature is
    /// checked with the signing secret of the tenant the button names before
    /// anything in it is acted on; the Slack user must be mapped to a principal,
    /// and that principal must be allowed to decide the review.
    pub async fn slack_interaction(
        &self,
        timestamp: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<SlackOutcome, ApiError> {
        use crate::notify::slack;
        let refused = |why: String| {
            tracing::warn!("refused a Slack interaction: {why}");
            ApiError::unauthenticated("the request is not signed by the tenant's Slack app")
        };
        let interaction = slack::parse_interaction(body).map_err(|e| ApiError::invalid("payload", e.to_string()))?;
        let tenant: TenantId = interaction.tenant_id.parse().map_err(|_| refused("unknown tenant".into()))?;
        let settings = self
            .tenants
            .read(|t| t.get(&tenant).and_then(|s| s.slack.clone()))
            .ok_or_else(|| refused(format!("tenant {tenant} has no Slack integration")))?;
        let secret = self
            .read_secret(tenant, SLACK_SIGNING_SECRET)
            .await?
            .ok_or_else(|| refused(format!("tenant {tenant} has no Slack signing secret")))?;
        slack::verify_request(&secret, timestamp, signature, body, self.now()).map_err(|e| refused(e.to_string()))?;
        // Signed by the tenant's app, and from the tenant's workspace: an app shared
        // with another workspace cannot press this tenant's buttons.
        if interaction.team_id != settings.team_id {
            return Err(refused(format!("the press came from workspace {}, not the tenant's", interaction.team_id)));
        }
        let user = settings.users.get(&interaction.user_id).ok_or_else(|| {
            ApiError::forbidden(format!(
                "Slack user {} is not mapped to an Airlock principal; ask an admin to add them",
                interaction.user_id
            ))
        })?;
        let principal = Principal {
            tenant_id: tenant,
            issuer: format!("slack:{}", interaction.team_id),
            subject: user.subject.clone(),
            groups: user.groups.clone(),
            claims: BTreeMap::new(),
            kind: airlock_core::principal::PrincipalKind::Human,
            admin: airlock_core::principal::AdminScope::None,
        };
        let input = super::DecisionInput {
            approve: interaction.approve,
            comment: format!("from Slack as {}", interaction.user_name),
            scope: None,
        };
        let review = self.decide_review(&principal, &interaction.review_id, input, "slack").await?;
        Ok(SlackOutcome { review })
    }
}
