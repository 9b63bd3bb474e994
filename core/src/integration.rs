//! Where a tenant's notifications go: outbound webhooks and a Slack workspace.
//! Their secrets (signing keys, the bot token) are kept in the secret store,
//! never in the log.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::WebhookId;

/// An endpoint that receives the tenant's events, signed per Standard Webhooks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    pub id: WebhookId,
    pub url: String,
    /// Event type names to deliver (`access_requested`, ...); empty: every event.
    pub event_types: Vec<String>,
    pub description: String,
}

impl Webhook {
    pub fn wants(&self, event_type: &str) -> bool {
        self.event_types.is_empty() || self.event_types.iter().any(|t| t == event_type)
    }
}

/// The tenant's Slack workspace: where review messages go and who its users are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlackSettings {
    /// The Slack workspace (`T0123456789`): button presses from any other are refused.
    pub team_id: String,
    /// The channel review messages are posted to (an id such as `C0123456789`).
    pub channel: String,
    /// Slack's Web API base URL (`https://slack.com/api`).
    pub api_base_url: String,
    /// Slack user id to the principal that user acts as when approving.
    pub users: BTreeMap<String, SlackUser>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlackUser {
    pub subject: String,
    pub groups: Vec<String>,
}

/// Slack's Web API.
pub const SLACK_API_BASE_URL: &str = "https://slack.com/api";
