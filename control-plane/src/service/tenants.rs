//! Tenants: created by platform admins; each starts with a signing key for the
//! tokens Airlock mints for it and an admin API key shown once.

use std::sync::Arc;

use airlock_core::connection::validate_name;
use airlock_core::event::stream;
use airlock_core::principal::{AdminScope, Principal};
use airlock_core::{Event, KeyId, TenantId};
use serde::{Deserialize, Serialize};

use super::{ControlPlane, Planned};
use crate::error::ApiError;
use crate::eventlog::ExpectedVersion;

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TenantView {
    pub id: String,
    pub name: String,
    /// The tenant's last event `seq`.
    pub seq: u64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CreatedTenant {
    pub tenant: TenantView,
    /// An admin API key for the new tenant. Shown once; only its hash is kept.
    pub admin_token: String,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct CreateTenantInput {
    pub name: String,
}

/// The tenant `airlock up` creates on first start.
pub const DEFAULT_TENANT: &str = "default";

impl ControlPlane {
    pub async fn create_tenant(&self, principal: &Principal, name: &str) -> Result<CreatedTenant, ApiError> {
        if !principal.is_platform_admin() {
            return Err(ApiError::forbidden("creating tenants needs a platform admin token"));
        }
        self.create_tenant_unchecked(name, AdminScope::Tenant, &principal.subject).await
    }

    async fn create_tenant_unchecked(
        &self,
        name: &str,
        admin_scope: AdminScope,
        actor: &str,
    ) -> Result<CreatedTenant, ApiError> {
        validate_name("name", name).map_err(|r| ApiError::invalid("name", r.trim_start_matches("name: ")))?;
        let _guard = self.create_lock.lock().await;
        for tenant in self.log.tenants().await.map_err(|e| ApiError::internal("list tenants", e))? {
            self.catch_up(tenant).await.map_err(|e| ApiError::internal("catch up with the event log", e))?;
        }
        if self.tenants.read(|t| t.by_name(name).is_some()) {
            return Err(ApiError::conflict(format!("a tenant named {name:?} already exists")));
        }
        let tenant_id = TenantId::new();
        let (signing_key, _) = self.new_signing_key(tenant_id).await?;
        let (admin_token, key_event) = admin_key(admin_scope);
        let planned = Planned {
            stream: stream::TENANT.to_owned(),
            expected: ExpectedVersion::NoStream,
            events: vec![Event::TenantCreated { tenant_id, name: name.to_owned() }, signing_key, key_event],
        };
        let lock = self.write_lock(tenant_id);
        let _tenant_guard = lock.lock().await;
        let records = self.append(tenant_id, actor, planned).await?;
        let seq = records.last().map_or(0, |r| r.seq);
        tracing::info!(tenant = %tenant_id, name, "tenant created");
        Ok(CreatedTenant { tenant: TenantView { id: tenant_id.to_string(), name: name.to_owned(), seq }, admin_token })
    }

    /// Makes sure the default tenant exists. Returns a new platform admin token
    /// when one was issued: on first start, or when `issue_admin_token` asks for
    /// a fresh one (the old ones keep working).
    pub async fn bootstrap(self: &Arc<Self>, issue_admin_token: bool) -> Result<Option<String>, ApiError> {
        let existing = self.tenants.read(|t| t.by_name(DEFAULT_TENANT).map(|(id, _)| *id));
        match existing {
            None => {
                let created = self.create_tenant_unchecked(DEFAULT_TENANT, AdminScope::Platform, "system").await?;
                Ok(Some(created.admin_token))
            }
            Some(tenant) if issue_admin_token => {
                let (token, event) = admin_key(AdminScope::Platform);
                let Event::ApiKeyIssued { key_id, .. } = &event else {
                    return Err(ApiError::internal("issue an admin key", "unexpected event"));
                };
                let planned = Planned::one(stream::api_key(key_id), ExpectedVersion::NoStream, event.clone());
                self.command(tenant, "system", |_| Ok((planned, ()))).await?;
                Ok(Some(token))
            }
            Some(_) => Ok(None),
        }
    }

    pub fn list_tenants(&self, principal: &Principal) -> Vec<TenantView> {
        self.tenants.read(|t| {
            t.created()
                .filter(|(id, _)| principal.is_platform_admin() || **id == principal.tenant_id)
                .map(|(id, s)| TenantView { id: id.to_string(), name: s.name.clone(), seq: s.seq })
                .collect()
        })
    }

    /// Another tenant's id answers 404, exactly like an id that does not exist.
    pub fn get_tenant(&self, principal: &Principal, id: &str) -> Result<TenantView, ApiError> {
        let not_found = || ApiError::not_found(format!("tenant {id}"));
        let tenant: TenantId = id.parse().map_err(|_| not_found())?;
        if !principal.is_platform_admin() && tenant != principal.tenant_id {
            return Err(not_found());
        }
        self.tenants
            .read(|t| {
                t.get(&tenant).filter(|s| s.tenant_id.is_some()).map(|s| TenantView {
                    id: tenant.to_string(),
                    name: s.name.clone(),
                    seq: s.seq,
                })
            })
            .ok_or_else(not_found)
    }

    /// Generates a signing key pair, stores the private half in the secret store,
    /// and returns the event that publishes the public half.
    async fn new_signing_key(&self, tenant: TenantId) -> Result<(Event, String), ApiError> {
        let key = airlock_identity::SigningKeyPair::generate();
        self.secrets
            .put(tenant, &format!("signing-key/{}", key.kid), key.private_key())
            .await
            .map_err(|e| ApiError::internal("store a signing key", e))?;
        let kid = key.kid.clone();
        Ok((
            Event::SigningKeyAdded {
                kid: key.kid.clone(),
                algorithm: "EdDSA".into(),
                public_key: key.public_key.to_vec(),
            },
            kid,
        ))
    }
}

fn admin_key(scope: AdminScope) -> (String, Event) {
    let (token, sha256) = airlock_identity::generate_api_key();
    let key_id = KeyId::new();
    (token, Event::ApiKeyIssued { key_id, name: "admin".into(), sha256, scope })
}
