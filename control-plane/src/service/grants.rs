//! Grants made directly by a tenant admin. (Access requests, approvals and
//! expiry events build on the same `GrantActivated`/`GrantRevoked` events.)

use airlock_core::connection::{CredentialMode, validate_name};
use airlock_core::event::stream;
use airlock_core::grant::Grant;
use airlock_core::principal::Principal;
use airlock_core::{Event, GrantId, TenantState};
use serde::{Deserialize, Serialize};

use super::tokens::unix_now;
use super::{ControlPlane, Planned, require_tenant_admin};
use crate::error::ApiError;
use crate::eventlog::ExpectedVersion;

/// The longest grant an admin can make directly.
pub const MAX_GRANT_TTL_SECS: u64 = 24 * 3600;

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantInput {
    /// The principal's subject, as its token names it.
    pub subject: String,
    /// The issuer that must vouch for the subject (default: any issuer the tenant trusts).
    #[serde(default)]
    pub issuer: Option<String>,
    /// Connection id or name.
    pub connection: String,
    /// A role of the connection (a key of its `roles`).
    pub role: String,
    /// Lifetime in seconds (at most 86400).
    pub ttl_seconds: u64,
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GrantView {
    pub id: String,
    pub subject: String,
    pub issuer: String,
    pub connection_id: String,
    pub connection: String,
    pub role: String,
    pub starts_at_unix: i64,
    pub expires_at_unix: i64,
    pub reason: String,
    pub granted_by: String,
    /// `active`, `expired` or `revoked`.
    pub state: String,
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeInput {
    #[serde(default)]
    pub reason: String,
}

fn view(state: &TenantState, g: &Grant, status: &str) -> GrantView {
    GrantView {
        id: g.id.to_string(),
        subject: g.subject.clone(),
        issuer: g.issuer.clone(),
        connection_id: g.connection_id.to_string(),
        connection: state.connections.get(&g.connection_id).map(|c| c.name.clone()).unwrap_or_default(),
        role: g.role.clone(),
        starts_at_unix: g.starts_at_unix,
        expires_at_unix: g.expires_at_unix,
        reason: g.reason.clone(),
        granted_by: g.granted_by.clone(),
        state: status.to_owned(),
    }
}

fn status(g: &Grant, now: i64) -> &'static str {
    if g.is_live(now) { "active" } else { "expired" }
}

impl ControlPlane {
    pub async fn create_grant(&self, principal: &Principal, input: GrantInput) -> Result<GrantView, ApiError> {
        require_tenant_admin(principal)?;
        if input.subject.is_empty() || input.subject.len() > 255 || input.subject.chars().any(char::is_control) {
            return Err(ApiError::invalid("subject", "1 to 255 printable characters"));
        }
        if input.ttl_seconds == 0 || input.ttl_seconds > MAX_GRANT_TTL_SECS {
            return Err(ApiError::invalid("ttl_seconds", format!("from 1 to {MAX_GRANT_TTL_SECS}")));
        }
        if input.reason.len() > 1024 {
            return Err(ApiError::invalid("reason", "at most 1024 characters"));
        }
        validate_name("role", &input.role).map_err(|r| ApiError::invalid("role", r.trim_start_matches("role: ")))?;
        let now = unix_now();
        let (_, view) = self
            .command(principal.tenant_id, &principal.subject, |state| {
                let connection = state
                    .find_connection(&input.connection)
                    .ok_or_else(|| ApiError::not_found(format!("connection {}", input.connection)))?;
                if connection.credential_mode == CredentialMode::SessionRole
                    && !connection.roles.contains_key(&input.role)
                {
                    let known: Vec<&str> = connection.roles.keys().map(String::as_str).collect();
                    return Err(ApiError::invalid(
                        "role",
                        format!("{} has no role {:?} (it has: {})", connection.name, input.role, known.join(", ")),
                    ));
                }
                let grant = Grant {
                    id: GrantId::new(),
                    subject: input.subject.clone(),
                    issuer: input.issuer.clone().unwrap_or_default(),
                    connection_id: connection.id,
                    role: input.role.clone(),
                    starts_at_unix: now,
                    expires_at_unix: now.saturating_add(i64::try_from(input.ttl_seconds).unwrap_or(i64::MAX)),
                    reason: input.reason.clone(),
                    granted_by: principal.subject.clone(),
                };
                let view = view(state, &grant, "active");
                Ok((
                    Planned::one(stream::grant(&grant.id), ExpectedVersion::NoStream, Event::GrantActivated { grant }),
                    view,
                ))
            })
            .await?;
        tracing::info!(tenant = %principal.tenant_id, grant = %view.id, subject = %view.subject, connection = %view.connection, "grant activated");
        Ok(view)
    }

    /// Every grant: active, expired or revoked.
    pub fn list_grants(&self, principal: &Principal) -> Result<Vec<GrantView>, ApiError> {
        require_tenant_admin(principal)?;
        let now = unix_now();
        Ok(self.tenants.read(|t| {
            t.get(&principal.tenant_id)
                .map(|s| {
                    let live = s.grants.values().map(|g| view(s, g, status(g, now)));
                    let revoked = s.revoked_grants.values().map(|(g, _)| view(s, g, "revoked"));
                    live.chain(revoked).collect()
                })
                .unwrap_or_default()
        }))
    }

    pub fn get_grant(&self, principal: &Principal, id: &str) -> Result<GrantView, ApiError> {
        require_tenant_admin(principal)?;
        let not_found = || ApiError::not_found(format!("grant {id}"));
        let grant_id: GrantId = id.parse().map_err(|_| not_found())?;
        let now = unix_now();
        self.tenants
            .read(|t| {
                t.get(&principal.tenant_id).and_then(|s| {
                    s.grants
                        .get(&grant_id)
                        .map(|g| view(s, g, status(g, now)))
                        .or_else(|| s.revoked_grants.get(&grant_id).map(|(g, _)| view(s, g, "revoked")))
                })
            })
            .ok_or_else(not_found)
    }

    /// Ends a grant now: every worker ends the sessions it admitted.
    pub async fn revoke_grant(&self, principal: &Principal, id: &str, reason: &str) -> Result<GrantView, ApiError> {
        require_tenant_admin(principal)?;
        let not_found = || ApiError::not_found(format!("grant {id}"));
        let grant_id: GrantId = id.parse().map_err(|_| not_found())?;
        let (_, view) = self
            .command(principal.tenant_id, &principal.subject, |state| {
                let grant = state.grants.get(&grant_id).ok_or_else(not_found)?;
                let view = view(state, grant, "revoked");
                let event =
                    Event::GrantRevoked { grant_id, revoked_by: principal.subject.clone(), reason: reason.to_owned() };
                Ok((Planned::one(stream::grant(&grant_id), ExpectedVersion::Any, event), view))
            })
            .await?;
        tracing::info!(tenant = %principal.tenant_id, grant = %view.id, "grant revoked");
        Ok(view)
    }
}
