//! Grants: listing, revoking, and grants made directly by a tenant admin.
//! Grants that come from access requests are made in `access.rs`.

use airlock_core::connection::{ConnectionSpec, CredentialMode, validate_name};
use airlock_core::event::stream;
use airlock_core::grant::Grant;
use airlock_core::principal::Principal;
use airlock_core::state::RequestState;
use airlock_core::{Event, GrantId, ReviewId, TenantState};
use serde::{Deserialize, Serialize};

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
    /// Who revoked it and why, when revoked.
    pub revoked_by: Option<String>,
    pub revoke_reason: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeInput {
    #[serde(default)]
    pub reason: String,
}

pub(crate) fn grant_view(state: &TenantState, g: &Grant, now: i64) -> GrantView {
    let revocation = state.revoked_grants.get(&g.id).map(|(_, r)| r);
    let status = match state.grant_state(&g.id, now) {
        Some(RequestState::Revoked) => "revoked",
        Some(RequestState::Active) => "active",
        _ => "expired",
    };
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
        revoked_by: revocation.map(|r| r.revoked_by.clone()),
        revoke_reason: revocation.map(|r| r.reason.clone()),
    }
}

/// Refuses a role the connection does not define (for per-session roles).
pub(crate) fn check_role(connection: &ConnectionSpec, role: &str) -> Result<(), ApiError> {
    validate_name("role", role).map_err(|r| ApiError::invalid("role", r.trim_start_matches("role: ")))?;
    if connection.credential_mode == CredentialMode::SessionRole && !connection.roles.contains_key(role) {
        let known: Vec<&str> = connection.roles.keys().map(String::as_str).collect();
        return Err(ApiError::invalid(
            "role",
            format!("{} has no role {:?} (it has: {})", connection.name, role, known.join(", ")),
        ));
    }
    Ok(())
}

/// Who may see or revoke a grant: tenant admins, its holder, and the approvers
/// of the request it came from.
fn may_manage(principal: &Principal, state: &TenantState, g: &Grant) -> bool {
    principal.is_tenant_admin()
        || principal.subject == g.subject
        || state.reviews.get(&ReviewId::of_request(&g.id)).is_some_and(|r| r.terms.approvers.admit(principal))
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
        let now = self.now();
        let (_, grant_id) = self
            .command(principal.tenant_id, &principal.subject, |state| {
                let connection = state
                    .find_connection(&input.connection)
                    .ok_or_else(|| ApiError::not_found(format!("connection {}", input.connection)))?;
                check_role(connection, &input.role)?;
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
                let id = grant.id;
                Ok((Planned::one(stream::grant(&id), ExpectedVersion::NoStream, Event::GrantActivated { grant }), id))
            })
            .await?;
        let view = self.view_after(principal.tenant_id, "grant access", |s| {
            s.any_grant(&grant_id).map(|g| grant_view(s, g, now))
        })?;
        tracing::info!(tenant = %principal.tenant_id, grant = %view.id, subject = %view.subject, connection = %view.connection, "grant activated");
        Ok(view)
    }

    /// Every grant the caller may see (tenant admins: all), newest first.
    pub fn list_grants(&self, principal: &Principal) -> Vec<GrantView> {
        let now = self.now();
        self.tenants.read(|t| {
            let Some(s) = t.get(&principal.tenant_id) else { return Vec::new() };
            let live = s.grants.values();
            let revoked = s.revoked_grants.values().map(|(g, _)| g);
            let expired = s.expired_grants.values();
            let mut all: Vec<&Grant> =
                live.chain(revoked).chain(expired).filter(|g| may_manage(principal, s, g)).collect();
            all.sort_by_key(|g| std::cmp::Reverse(g.id));
            all.into_iter().map(|g| grant_view(s, g, now)).collect()
        })
    }

    pub fn get_grant(&self, principal: &Principal, id: &str) -> Result<GrantView, ApiError> {
        let not_found = || ApiError::not_found(format!("grant {id}"));
        let grant_id: GrantId = id.parse().map_err(|_| not_found())?;
        let now = self.now();
        self.tenants
            .read(|t| {
                let s = t.get(&principal.tenant_id)?;
                let g = s.any_grant(&grant_id)?;
                may_manage(principal, s, g).then(|| grant_view(s, g, now))
            })
            .ok_or_else(not_found)
    }

    /// Ends a grant now: every worker ends the sessions it admitted. Tenant
    /// admins, the grant's holder and its approvers may revoke it.
    pub async fn revoke_grant(&self, principal: &Principal, id: &str, reason: &str) -> Result<GrantView, ApiError> {
        if reason.len() > 1024 {
            return Err(ApiError::invalid("reason", "at most 1024 characters"));
        }
        let not_found = || ApiError::not_found(format!("grant {id}"));
        let grant_id: GrantId = id.parse().map_err(|_| not_found())?;
        let now = self.now();
        let (_, ()) = self
            .command(principal.tenant_id, &principal.subject, |state| {
                let grant =
                    state.any_grant(&grant_id).filter(|g| may_manage(principal, state, g)).ok_or_else(not_found)?;
                if !state.grants.contains_key(&grant_id) {
                    let status = grant_view(state, grant, now).state;
                    return Err(ApiError::conflict(format!("grant {id} is already {status}")));
                }
                let event =
                    Event::GrantRevoked { grant_id, revoked_by: principal.subject.clone(), reason: reason.to_owned() };
                Ok((Planned::one(stream::grant(&grant_id), ExpectedVersion::Any, event), ()))
            })
            .await?;
        let view = self.view_after(principal.tenant_id, "revoke a grant", |s| {
            s.any_grant(&grant_id).map(|g| grant_view(s, g, now))
        })?;
        tracing::info!(tenant = %principal.tenant_id, grant = %view.id, by = %principal.subject, "grant revoked");
        Ok(view)
    }
}
