//! Short-lived Airlock tokens for workloads without an IdP, minted by a tenant
//! admin. Each mint is recorded (subject, groups, expiry, `jti`; never the token).

use std::sync::Arc;

use airlock_core::event::stream;
use airlock_core::principal::{Principal, PrincipalKind};
use airlock_core::{Event, TenantId};
use serde::{Deserialize, Serialize};

use super::{ControlPlane, Planned, require_tenant_admin};
use crate::error::ApiError;
use crate::eventlog::ExpectedVersion;

pub const DEFAULT_TOKEN_TTL_SECS: u64 = 900;
pub const MAX_TOKEN_TTL_SECS: u64 = 12 * 3600;

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MintTokenInput {
    pub subject: String,
    #[serde(default)]
    pub groups: Vec<String>,
    /// Lifetime in seconds (default 900, at most 43200).
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
}

#[derive(Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MintedToken {
    pub token: String,
    pub expires_at_unix: i64,
}

impl std::fmt::Debug for MintedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MintedToken").field("expires_at_unix", &self.expires_at_unix).finish_non_exhaustive()
    }
}

impl ControlPlane {
    pub async fn mint_token(&self, principal: &Principal, input: MintTokenInput) -> Result<MintedToken, ApiError> {
        require_tenant_admin(principal)?;
        if input.subject.is_empty() || input.subject.len() > 255 || input.subject.chars().any(char::is_control) {
            return Err(ApiError::invalid("subject", "1 to 255 printable characters"));
        }
        if input.groups.len() > 64 {
            return Err(ApiError::invalid("groups", "at most 64 groups"));
        }
        for (i, g) in input.groups.iter().enumerate() {
            if g.is_empty() || g.len() > 128 || g.chars().any(char::is_control) {
                return Err(ApiError::invalid(format!("groups[{i}]"), "1 to 128 printable characters"));
            }
        }
        let ttl = input.ttl_seconds.unwrap_or(DEFAULT_TOKEN_TTL_SECS);
        if ttl == 0 || ttl > MAX_TOKEN_TTL_SECS {
            return Err(ApiError::invalid("ttl_seconds", format!("from 1 to {MAX_TOKEN_TTL_SECS}")));
        }
        let tenant = principal.tenant_id;
        let (kid, private_key) = self.current_signing_key(tenant).await?;
        let minted = airlock_identity::mint(&airlock_identity::MintRequest {
            issuer: &self.options.public_url,
            tenant,
            kid: &kid,
            private_key: &private_key,
            subject: &input.subject,
            groups: &input.groups,
            kind: PrincipalKind::Workload,
            ttl: std::time::Duration::from_secs(ttl),
            now_unix: unix_now(),
        })
        .map_err(|e| ApiError::internal("mint a token", e))?;
        let event = Event::TokenIssued {
            jti: minted.jti.clone(),
            subject: input.subject,
            groups: input.groups,
            expires_at_unix: minted.expires_at_unix,
        };
        self.command(tenant, &principal.subject, |_| {
            Ok((Planned::one(stream::TOKENS, ExpectedVersion::Any, event), ()))
        })
        .await?;
        Ok(MintedToken { token: minted.token, expires_at_unix: minted.expires_at_unix })
    }

    /// The tenant's newest signing key and its private half (cached after the
    /// first read from the secret store).
    async fn current_signing_key(&self, tenant: TenantId) -> Result<(String, Arc<Vec<u8>>), ApiError> {
        let kid = self
            .tenants
            .read(|t| t.get(&tenant).and_then(|s| s.current_signing_key.clone()))
            .ok_or_else(|| ApiError::internal("find a signing key", format!("tenant {tenant} has none")))?;
        if let Some(key) = self.signing_keys.lock().unwrap_or_else(|e| e.into_inner()).get(&kid) {
            return Ok((kid, key.clone()));
        }
        let secret = self
            .secrets
            .get(tenant, &format!("signing-key/{kid}"))
            .await
            .map_err(|e| ApiError::internal("read a signing key", e))?
            .ok_or_else(|| {
                ApiError::internal("read a signing key", format!("{kid} is missing from the secret store"))
            })?;
        let key = Arc::new(secret.plaintext);
        self.signing_keys.lock().unwrap_or_else(|e| e.into_inner()).insert(kid.clone(), key.clone());
        Ok((kid, key))
    }
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
