//! The events of a tenant's log, as the domain sees them. The protobuf form in
//! `airlock-proto` is the stored and distributed encoding; conversions live there.

use serde::{Deserialize, Serialize};

use crate::connection::ConnectionSpec;
use crate::grant::Grant;
use crate::ids::{ConnectionId, GrantId, IssuerId, KeyId, ReviewId, SessionId, TenantId, WebhookId};
use crate::integration::{SlackSettings, Webhook};
use crate::principal::{AdminScope, PrincipalKind};
use crate::review::{AccessRequest, Decision, HeldCommand, Outcome};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    TenantCreated {
        tenant_id: TenantId,
        name: String,
    },
    ConnectionRegistered {
        spec: ConnectionSpec,
    },
    ConnectionUpdated {
        spec: ConnectionSpec,
    },
    ConnectionRemoved {
        connection_id: ConnectionId,
        name: String,
    },
    PolicyApplied {
        version: u64,
        source: String,
        digest: String,
    },
    IssuerTrusted {
        issuer: TrustedIssuer,
    },
    IssuerRemoved {
        issuer_id: IssuerId,
    },
    ApiKeyIssued {
        key_id: KeyId,
        name: String,
        sha256: String,
        scope: AdminScope,
    },
    ApiKeyRevoked {
        key_id: KeyId,
    },
    SigningKeyAdded {
        kid: String,
        algorithm: String,
        public_key: Vec<u8>,
    },
    TokenIssued {
        jti: String,
        subject: String,
        groups: Vec<String>,
        expires_at_unix: i64,
    },
    GrantActivated {
        grant: Grant,
    },
    GrantRevoked {
        grant_id: GrantId,
        revoked_by: String,
        reason: String,
    },
    /// The grant's end passed; recorded by the control plane (workers end access
    /// by the clock without waiting for it).
    GrantExpired {
        grant_id: GrantId,
    },
    /// A principal asked for access. Without a review, `GrantActivated` follows
    /// in the same append.
    AccessRequested {
        request: AccessRequest,
    },
    /// A worker holds a statement until it is reviewed.
    CommandHeld {
        command: HeldCommand,
    },
    /// One approver's decision on a pending review.
    ReviewDecided {
        review_id: ReviewId,
        decision: Decision,
    },
    /// A review closed. An approved access request's `GrantActivated` follows
    /// in the same append.
    ReviewResolved {
        review_id: ReviewId,
        outcome: Outcome,
        at_unix: i64,
    },
    WebhookAdded {
        webhook: Webhook,
    },
    WebhookRemoved {
        webhook_id: WebhookId,
    },
    SlackConfigured {
        slack: SlackSettings,
    },
    SlackRemoved {},
    SessionOpened {
        session: SessionInfo,
    },
    SessionClosed {
        session_id: SessionId,
        duration_ms: u64,
        bytes_from_client: u64,
        bytes_to_client: u64,
        reason: String,
    },
}

/// A session as recorded when it opens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub id: SessionId,
    pub grant_id: GrantId,
    pub connection_id: ConnectionId,
    pub subject: String,
    pub issuer: String,
    pub client_addr: String,
    pub worker_id: String,
    /// The role the session runs as on the target (`airlock_...`), or the static user.
    pub target_role: String,
}

impl Event {
    /// The event's type name, as stored beside it and shown in `GET /v1/events`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Event::TenantCreated { .. } => "tenant_created",
            Event::ConnectionRegistered { .. } => "connection_registered",
            Event::ConnectionUpdated { .. } => "connection_updated",
            Event::ConnectionRemoved { .. } => "connection_removed",
            Event::PolicyApplied { .. } => "policy_applied",
            Event::IssuerTrusted { .. } => "issuer_trusted",
            Event::IssuerRemoved { .. } => "issuer_removed",
            Event::ApiKeyIssued { .. } => "api_key_issued",
            Event::ApiKeyRevoked { .. } => "api_key_revoked",
            Event::SigningKeyAdded { .. } => "signing_key_added",
            Event::TokenIssued { .. } => "token_issued",
            Event::GrantActivated { .. } => "grant_activated",
            Event::GrantRevoked { .. } => "grant_revoked",
            Event::GrantExpired { .. } => "grant_expired",
            Event::AccessRequested { .. } => "access_requested",
            Event::CommandHeld { .. } => "command_held",
            Event::ReviewDecided { .. } => "review_decided",
            Event::ReviewResolved { .. } => "review_resolved",
            Event::WebhookAdded { .. } => "webhook_added",
            Event::WebhookRemoved { .. } => "webhook_removed",
            Event::SlackConfigured { .. } => "slack_configured",
            Event::SlackRemoved { .. } => "slack_removed",
            Event::SessionOpened { .. } => "session_opened",
            Event::SessionClosed { .. } => "session_closed",
        }
    }
}

/// An OIDC issuer a tenant trusts, and how its claims become a principal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustedIssuer {
    pub id: IssuerId,
    pub name: String,
    /// The `iss` claim, exactly; discovery is at `{issuer_url}/.well-known/openid-configuration`.
    pub issuer_url: String,
    /// The `aud` the token must carry.
    pub audience: String,
    /// Which claim names the subject (`sub`, or e.g. a CI provider's `repository`).
    pub subject_claim: String,
    /// Which claim lists groups (empty: none).
    pub groups_claim: String,
    pub principal_kind: PrincipalKind,
}

/// Stream names: the unit of optimistic concurrency in the log.
pub mod stream {
    use crate::ids::{ConnectionId, GrantId, IssuerId, KeyId, ReviewId, SessionId, WebhookId};

    pub const TENANT: &str = "tenant";
    pub const SLACK: &str = "integration/slack";
    pub const POLICY: &str = "policy";
    pub const SIGNING_KEYS: &str = "signing-keys";
    pub const TOKENS: &str = "tokens";

    pub fn connection(id: &ConnectionId) -> String {
        format!("connection/{id}")
    }

    pub fn issuer(id: &IssuerId) -> String {
        format!("issuer/{id}")
    }

    pub fn api_key(id: &KeyId) -> String {
        format!("api-key/{id}")
    }

    pub fn grant(id: &GrantId) -> String {
        format!("grant/{id}")
    }

    /// A held statement's review. (An access request, its review and its grant
    /// share the request's `grant/` stream.)
    pub fn review(id: &ReviewId) -> String {
        format!("review/{id}")
    }

    pub fn webhook(id: &WebhookId) -> String {
        format!("webhook/{id}")
    }

    pub fn session(id: &SessionId) -> String {
        format!("session/{id}")
    }
}
